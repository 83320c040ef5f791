//! Who a token belongs to, by asking the API server (TokenReview) with the
//! identity service's audience. A successful answer is remembered briefly,
//! so a proxy's repeated requests do not each cost an API call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use strait_contract::names::IDENTITY_TOKEN_AUDIENCE;

/// How long a reviewed token is trusted without asking again.
const REMEMBER: Duration = Duration::from_secs(30);

/// A ServiceAccount, as a token proved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("the token is not valid for {IDENTITY_TOKEN_AUDIENCE}: {0}")]
    Unauthenticated(String),
    #[error("the token is not a ServiceAccount's (user {0:?})")]
    NotServiceAccount(String),
    #[error("cannot review the token: {0}")]
    Unavailable(String),
}

pub trait TokenReviewer: Send + Sync {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ServiceAccount, ReviewError>>;
}

/// Reads `system:serviceaccount:<namespace>:<name>`.
pub fn service_account(username: &str) -> Result<ServiceAccount, ReviewError> {
    let parts: Vec<&str> = username.split(':').collect();
    match parts.as_slice() {
        ["system", "serviceaccount", namespace, name] if !namespace.is_empty() && !name.is_empty() => {
            Ok(ServiceAccount {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(ReviewError::NotServiceAccount(username.to_string())),
    }
}

pub struct KubeTokenReviewer {
    client: kube::Client,
    remembered: Mutex<HashMap<String, (ServiceAccount, Instant)>>,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeTokenReviewer {
            client,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    async fn ask(&self, token: &str) -> Result<ServiceAccount, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![IDENTITY_TOKEN_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Unauthenticated(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == IDENTITY_TOKEN_AUDIENCE)
        {
            return Err(ReviewError::Unauthenticated("the token is for another audience".into()));
        }
        let user = status.user.unwrap_or_default();
        service_account(user.username.as_deref().unwrap_or_default())
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<ServiceAccount, ReviewError>> {
        Box::pin(async move {
            let remembered = self
                .remembered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(token)
                .cloned();
            if let Some((account, at)) = remembered.filter(|(_, at)| at.elapsed() < REMEMBER) {
                let _ = at;
                return Ok(account);
            }
            let account = self.ask(token).await?;
            let mut remembered = self
                .remembered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            remembered.retain(|_, (_, at)| at.elapsed() < REMEMBER);
            remembered.insert(token.to_string(), (account.clone(), Instant::now()));
            Ok(account)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_name_service_accounts() {
        assert_eq!(
            service_account("system:serviceaccount:demo:web"),
            Ok(ServiceAccount {
                namespace: "demo".into(),
                name: "web".into()
            })
        );
        for other in [
            "admin",
            "system:node:lab",
            "system:serviceaccount:demo",
            "system:serviceaccount::web",
        ] {
            assert!(service_account(other).is_err(), "{other}");
        }
    }
}
