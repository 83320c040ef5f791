//! What the control plane makes for itself, once, in Secrets of its own
//! namespace that Helm neither renders nor owns: `helm template` stays
//! byte-identical, and uninstall + reinstall (or a GitOps tool that renders
//! without `lookup`) keep them.
//!
//! - The webhook CA (`ca.crt`, `ca.key`; ten years). Each replica signs its
//!   own serving certificate with it at start ([`WebhookCert`], renewed in
//!   memory before it expires), and [`keep_ca_bundle`] keeps the
//!   MutatingWebhookConfiguration's `caBundle` holding it. An upgrade changes
//!   neither, so there is no window where the API server trusts a CA the
//!   webhook does not serve.
//! - When the user supplies no identity material, the mesh's trust anchor,
//!   which is also the issuer (`ca.crt`, `tls.crt`, `tls.key`; ten years).
//!
//! Replicas race safely: the first create wins, and the others (409
//! AlreadyExists) read the winner's Secret.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::pki::{self, PkiError};

/// Marks the Secrets the control plane made (Helm's are `Helm`).
const MANAGED_BY: &str = "strait-injector";
/// The lifetime of the CAs made here (the webhook's and the mesh's).
const CA_DAYS: i64 = 3650;
/// A replica's serving certificate's lifetime; it is renewed after two thirds.
const SERVING_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Secret {namespace}/{name} has no {key}: restore it from a backup (strait made it once and does not overwrite it)"
    )]
    Missing {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// One Secret of the control plane's namespace, by name.
pub struct OwnSecret<'a> {
    pub api: &'a Api<Secret>,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl OwnSecret<'_> {
    fn api_error(&self, source: kube::Error) -> BootstrapError {
        BootstrapError::Api {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            source,
        }
    }

    /// The Secret's data as text, made by `make` (and created) if the
    /// Secret does not exist yet; every key of `required` must be in it.
    pub async fn get_or_create(
        &self,
        required: &[&'static str],
        make: impl FnOnce() -> Result<BTreeMap<String, String>, PkiError>,
    ) -> Result<BTreeMap<String, String>, BootstrapError> {
        let data = match self.api.get_opt(self.name).await.map_err(|e| self.api_error(e))? {
            Some(secret) => text(&secret),
            None => self.create(make()?).await?,
        };
        for key in required {
            if data.get(*key).is_none_or(|v| v.is_empty()) {
                return Err(BootstrapError::Missing {
                    namespace: self.namespace.to_string(),
                    name: self.name.to_string(),
                    key,
                });
            }
        }
        Ok(data)
    }

    async fn create(&self, data: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, BootstrapError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGED_BY.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.iter()
                    .map(|(key, value)| (key.clone(), ByteString(value.clone().into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{}/{}", self.namespace, self.name), "created");
                Ok(data)
            }
            // Another replica made it first: use theirs.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let secret = self.api.get(self.name).await.map_err(|e| self.api_error(e))?;
                Ok(text(&secret))
            }
            Err(source) => Err(self.api_error(source)),
        }
    }
}

fn text(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key.clone(), String::from_utf8_lossy(&value.0).into_owned()))
        .collect()
}

/// A new self-signed CA as Secret data: `ca.crt` and `ca.key`.
pub fn new_webhook_ca() -> Result<BTreeMap<String, String>, PkiError> {
    let ca = pki::self_signed_ca("strait-injector-webhook-ca", CA_DAYS)?;
    Ok(BTreeMap::from([
        ("ca.crt".to_string(), ca.cert_pem),
        ("ca.key".to_string(), ca.key_pem),
    ]))
}

/// A new trust anchor that is also the issuer, as Secret data: `ca.crt`,
/// `tls.crt` and `tls.key`.
pub fn new_mesh_ca(trust_domain: &str) -> Result<BTreeMap<String, String>, PkiError> {
    let ca = pki::self_signed_ca(&format!("identity.{trust_domain}"), CA_DAYS)?;
    Ok(BTreeMap::from([
        ("ca.crt".to_string(), ca.cert_pem.clone()),
        ("tls.crt".to_string(), ca.cert_pem),
        ("tls.key".to_string(), ca.key_pem),
    ]))
}

struct Current {
    key: Arc<CertifiedKey>,
    renew_at: time::OffsetDateTime,
}

/// This replica's webhook serving certificate, signed by the webhook CA for
/// the Service's DNS names, and signed anew when two thirds of its life
/// have passed (the CA, and so the `caBundle`, stay).
pub struct WebhookCert {
    issuer: Issuer<'static, KeyPair>,
    names: Vec<String>,
    current: Mutex<Current>,
}

impl std::fmt::Debug for WebhookCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCert").field("names", &self.names).finish()
    }
}

impl WebhookCert {
    pub fn new(ca_cert_pem: &str, ca_key_pem: &str, names: Vec<String>) -> Result<Self, PkiError> {
        let key = pki::load_key(ca_key_pem, "webhook CA key")?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key).map_err(|e| PkiError::Load {
            what: "webhook CA certificate".into(),
            problem: e.to_string(),
        })?;
        let current = sign(&issuer, &names)?;
        Ok(WebhookCert {
            issuer,
            names,
            current: Mutex::new(current),
        })
    }
}

fn sign(issuer: &Issuer<'static, KeyPair>, names: &[String]) -> Result<Current, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    let lifetime = time::Duration::seconds(SERVING_LIFETIME.as_secs() as i64);
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
    params.serial_number = Some(pki::random_serial());
    let leaf = params.signed_by(&key, issuer)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(Current {
        key: pki::certified_key(vec![leaf.der().clone()], &private, "webhook serving key")?,
        renew_at: now + lifetime * 2 / 3,
    })
}

impl ResolvesServerCert for WebhookCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if time::OffsetDateTime::now_utc() >= current.renew_at {
            match sign(&self.issuer, &self.names) {
                Ok(renewed) => {
                    tracing::info!("webhook serving certificate renewed");
                    *current = renewed;
                }
                Err(error) => tracing::warn!(%error, "keeping the webhook serving certificate"),
            }
        }
        Some(current.key.clone())
    }
}

/// How long after a failed write the `caBundle` is tried again, watch
/// event or not.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Keeps every webhook of the MutatingWebhookConfiguration `name` trusting
/// `ca_pem`: watches it (so a re-apply that drops the `caBundle` is mended
/// at once) and writes the bundle wherever it differs, retrying with
/// jittered back-off, and again every 30 s while it fails.
///
/// `settled` turns true once the bundle was written (or found right), or
/// the first list shows no configuration to write it to (injection is off,
/// or the configuration comes later and is mended when it does); it never
/// turns back, since the identity service shares the replica's readiness
/// and must not go out of service because the webhook did.
pub async fn keep_ca_bundle(client: kube::Client, name: String, ca_pem: String, settled: watch::Sender<bool>) {
    let api = Api::<MutatingWebhookConfiguration>::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen = false;
    let mut failing = false;
    loop {
        let retry = async {
            if failing {
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let event = tokio::select! {
            event = stream.next() => match event {
                Some(event) => event,
                None => return,
            },
            // A retry reads the configuration afresh, as an event would.
            () = retry => Ok(Event::Apply(MutatingWebhookConfiguration::default())),
        };
        match event {
            Ok(Event::Apply(_) | Event::InitApply(_)) => seen = true,
            Ok(Event::Delete(_)) => {
                tracing::warn!(configuration = %name, "the MutatingWebhookConfiguration was deleted: no pod is injected");
                failing = false;
                continue;
            }
            Ok(Event::InitDone) => {
                if !seen {
                    tracing::warn!(configuration = %name, "no MutatingWebhookConfiguration yet: no pod is injected");
                    let _ = settled.send(true);
                }
                continue;
            }
            Ok(Event::Init) => {
                seen = false;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, configuration = %name, "watching the MutatingWebhookConfiguration");
                continue;
            }
        }
        let attempt = || mend(&api, &name, &ca_pem);
        let backoff = ExponentialBuilder::default().with_jitter().with_max_times(6);
        match attempt.retry(backoff).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(configuration = %name, "caBundle set to the webhook CA");
                }
                failing = false;
                let _ = settled.send(true);
            }
            Err(error) => {
                tracing::warn!(%error, configuration = %name, "cannot set the caBundle; trying again in 30s");
                failing = true;
            }
        }
    }
}

/// Reads the configuration and writes the CA into every webhook's
/// `caBundle` where it differs; `true` when it wrote. The write carries the
/// resourceVersion read, so a concurrent change is a 409 and is retried.
async fn mend(api: &Api<MutatingWebhookConfiguration>, name: &str, ca_pem: &str) -> Result<bool, kube::Error> {
    let current = api.get(name).await?;
    let mut wanted = current.clone();
    for webhook in wanted.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
    }
    if wanted == current {
        return Ok(false);
    }
    api.replace(name, &PostParams::default(), &wanted).await?;
    Ok(true)
}
