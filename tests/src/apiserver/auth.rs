//! ServiceAccount tokens: the lab mints them for pods (as the kubelet asks
//! Kubernetes to), authenticates API requests with them, and answers
//! TokenReviews the way Kubernetes does.
//!
//! Tokens are opaque random strings bound to a pod: they stop being valid when
//! they expire or when the pod is gone, like Kubernetes' bound tokens. The
//! legacy kind, a ServiceAccount token Secret's, is bound to the Secret
//! instead and lives as long as it does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Value, json};

/// The audience of tokens meant for the API server itself.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// How a Secret-bound token's owner names its Secret (in `pod_uid`).
const SECRET_BINDING: &str = "secret:";
/// Legacy tokens do not expire; ten years stands for that.
const SECRET_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

#[derive(Clone, Debug)]
struct Token {
    owner: TokenOwner,
    audiences: Vec<String>,
    expires: SystemTime,
}

/// Who is making an API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The lab's own command line, over its local socket.
    Admin,
    /// No credentials: only health and version endpoints.
    Anonymous,
    ServiceAccount {
        namespace: String,
        name: String,
    },
}

impl Principal {
    /// The user name Kubernetes would give this principal.
    pub fn user_name(&self) -> String {
        match self {
            Principal::Admin => "system:admin".into(),
            Principal::Anonymous => "system:anonymous".into(),
            Principal::ServiceAccount { namespace, name } => format!("system:serviceaccount:{namespace}:{name}"),
        }
    }
}

#[derive(Default)]
pub struct Tokens {
    tokens: Mutex<HashMap<String, Token>>,
}

impl Tokens {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mints a token for a pod's ServiceAccount.
    pub fn mint(&self, owner: TokenOwner, audiences: Vec<String>, lifetime: Duration) -> String {
        let bytes: [u8; 32] = rand::random();
        let token = format!("lab.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
        let expires = SystemTime::now() + lifetime;
        let mut tokens = self.lock();
        let now = SystemTime::now();
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            token.clone(),
            Token {
                owner,
                audiences,
                expires,
            },
        );
        token
    }

    /// Mints the long-lived token of a ServiceAccount token Secret (the
    /// legacy kind): bound to the Secret, not to a pod.
    pub fn mint_for_secret(&self, namespace: &str, service_account: &str, secret_uid: &str) -> String {
        let owner = TokenOwner {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod_name: String::new(),
            pod_uid: format!("{SECRET_BINDING}{secret_uid}"),
        };
        self.mint(owner, vec![API_AUDIENCE.to_string()], SECRET_TOKEN_LIFETIME)
    }

    /// Invalidates the tokens of token Secrets whose uid is not in `live`.
    pub fn revoke_secrets_except(&self, live: &std::collections::HashSet<String>) {
        self.lock().retain(|_, t| {
            t.owner
                .pod_uid
                .strip_prefix(SECRET_BINDING)
                .is_none_or(|uid| live.contains(uid))
        });
    }

    /// Invalidates every token bound to a pod.
    pub fn revoke_pod(&self, pod_uid: &str) {
        self.lock().retain(|_, t| t.owner.pod_uid != pod_uid);
    }

    fn lookup(&self, token: &str) -> Result<Token, &'static str> {
        let token = self.lock().get(token).cloned().ok_or("invalid bearer token")?;
        if token.expires <= SystemTime::now() {
            return Err("token has expired");
        }
        Ok(token)
    }

    /// Authenticates an API request's bearer token (audience: the API server).
    pub fn authenticate(&self, bearer: &str) -> Option<Principal> {
        let token = self.lookup(bearer).ok()?;
        let for_api = token.audiences.iter().any(|a| a == API_AUDIENCE);
        for_api.then_some(Principal::ServiceAccount {
            namespace: token.owner.namespace,
            name: token.owner.service_account,
        })
    }

    /// Answers a TokenReview: fills in `status` as Kubernetes does.
    pub fn review(&self, mut review: Value) -> Value {
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let wanted: Vec<String> = review
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let wanted = if wanted.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            wanted
        };
        let status = match self.lookup(&token) {
            Err(error) => json!({"authenticated": false, "error": error, "user": {}}),
            Ok(found) => {
                let matched: Vec<&String> = wanted.iter().filter(|a| found.audiences.contains(a)).collect();
                if matched.is_empty() {
                    json!({
                        "authenticated": false,
                        "error": format!("token audiences {:?} is invalid for the target audiences {:?}", found.audiences, wanted),
                        "user": {},
                    })
                } else {
                    let owner = &found.owner;
                    let mut user = json!({
                        "username": format!("system:serviceaccount:{}:{}", owner.namespace, owner.service_account),
                        "uid": owner.pod_uid,
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", owner.namespace), "system:authenticated"],
                    });
                    // Only a pod-bound token names its pod.
                    if !owner.pod_name.is_empty() {
                        user["extra"] = json!({
                            "authentication.kubernetes.io/pod-name": [owner.pod_name],
                            "authentication.kubernetes.io/pod-uid": [owner.pod_uid],
                        });
                    }
                    json!({"authenticated": true, "audiences": matched, "user": user})
                }
            }
        };
        review["status"] = status;
        review["apiVersion"] = json!("authentication.k8s.io/v1");
        review["kind"] = json!("TokenReview");
        review
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> TokenOwner {
        TokenOwner {
            namespace: "demo".into(),
            service_account: "web".into(),
            pod_name: "web-1".into(),
            pod_uid: "uid-1".into(),
        }
    }

    fn review(tokens: &Tokens, token: &str, audiences: &[&str]) -> Value {
        tokens.review(json!({"spec": {"token": token, "audiences": audiences}}))["status"].clone()
    }

    #[test]
    fn reviews_check_token_and_audience() {
        let tokens = Tokens::default();
        let token = tokens.mint(owner(), vec!["strait-identity".into()], Duration::from_secs(60));
        let ok = review(&tokens, &token, &["strait-identity"]);
        assert_eq!(ok["authenticated"], true);
        assert_eq!(ok["user"]["username"], "system:serviceaccount:demo:web");
        assert_eq!(ok["audiences"], json!(["strait-identity"]));

        let wrong_audience = review(&tokens, &token, &["other"]);
        assert_eq!(wrong_audience["authenticated"], false);
        assert!(
            wrong_audience["error"]
                .as_str()
                .unwrap()
                .contains("invalid for the target audiences")
        );
        assert_eq!(review(&tokens, "garbage", &["strait-identity"])["authenticated"], false);
        // Without audiences the API server's own is meant.
        assert_eq!(review(&tokens, &token, &[])["authenticated"], false);

        tokens.revoke_pod("uid-1");
        assert_eq!(
            review(&tokens, &token, &["strait-identity"])["error"],
            "invalid bearer token"
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = Tokens::default();
        let token = tokens.mint(owner(), vec![API_AUDIENCE.into()], Duration::ZERO);
        assert_eq!(review(&tokens, &token, &[])["error"], "token has expired");
        assert_eq!(tokens.authenticate(&token), None);
    }
}
