//! The token controller: fills each ServiceAccount token Secret (type
//! `kubernetes.io/service-account-token`, annotation
//! `kubernetes.io/service-account.name`) with a long-lived token for that
//! ServiceAccount, the cluster's CA and the namespace, and invalidates the
//! token when its Secret goes, as Kubernetes' legacy token controller does.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use crate::apiserver::Api;
use crate::apiserver::resource::Resource;
use crate::apiserver::store::{name_of, namespace_of};

pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
const ACCOUNT_ANNOTATION: &str = "kubernetes.io/service-account.name";

pub async fn run(api: Arc<Api>, ca_pem: String) {
    let store = api.store.clone();
    super::run_controller(store, &["secrets"], || async { reconcile(&api, &ca_pem) }).await;
}

fn reconcile(api: &Api, ca_pem: &str) {
    let secrets = Resource::named("secrets");
    let (all, _) = api.store.list(secrets, None);
    let token_secrets: Vec<&Value> = all.iter().filter(|s| s["type"] == TOKEN_SECRET_TYPE).collect();
    let live: HashSet<String> = token_secrets
        .iter()
        .filter_map(|s| s.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
        .collect();
    api.tokens.revoke_secrets_except(&live);
    for secret in token_secrets {
        if secret.pointer("/data/token").is_some() {
            continue;
        }
        let account = secret
            .pointer(&format!(
                "/metadata/annotations/{}",
                ACCOUNT_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str);
        let (Some(account), Some(uid)) = (account, secret.pointer("/metadata/uid").and_then(Value::as_str)) else {
            continue;
        };
        let namespace = namespace_of(secret).to_string();
        let token = api.tokens.mint_for_secret(&namespace, account, uid);
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let data = json!({"token": encode(&token), "ca.crt": encode(ca_pem), "namespace": encode(&namespace)});
        let filled = api.store.modify(secrets, &namespace, name_of(secret), |s| {
            s["data"] = data;
            Ok(())
        });
        if let Err(error) = filled {
            tracing::warn!(secret = %name_of(secret), %error, "cannot fill the token Secret");
        }
    }
}
