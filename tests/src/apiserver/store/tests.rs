use serde_json::json;

use super::*;

fn pods() -> &'static Resource {
    Resource::named("pods")
}

fn pod(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}}, "spec": {"containers": []}})
}

#[test]
fn create_assigns_identity_and_versions() {
    let store = Store::default();
    let a = store.create(pods(), pod("a")).unwrap();
    let b = store.create(pods(), pod("b")).unwrap();
    assert_eq!(rv_of(&a), Some(1));
    assert_eq!(rv_of(&b), Some(2));
    assert_eq!(a["kind"], "Pod");
    assert_eq!(a["metadata"]["generation"], 1);
    assert_ne!(a["metadata"]["uid"], b["metadata"]["uid"]);
    assert_eq!(store.create(pods(), pod("a")).unwrap_err().code, 409);
}

#[test]
fn update_checks_the_resource_version() {
    let store = Store::default();
    let created = store.create(pods(), pod("a")).unwrap();
    let mut stale = created.clone();
    stale["spec"]["nodeName"] = json!("lab");
    let updated = store.update(pods(), stale.clone()).unwrap();
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(store.update(pods(), stale).unwrap_err().reason, "Conflict");
}

#[test]
fn watches_resume_from_the_log_and_expire_when_too_old() {
    let store = Store::default();
    store.create(pods(), pod("a")).unwrap();
    store.create(pods(), pod("b")).unwrap();
    store.remove(pods(), "demo", "a").unwrap();
    let (backlog, _) = store.watch_from(1).unwrap();
    let seen: Vec<_> = backlog
        .iter()
        .map(|e| (e.kind, name_of(&e.object).to_string()))
        .collect();
    assert_eq!(
        seen,
        [
            (EventType::Added, "b".to_string()),
            (EventType::Deleted, "a".to_string())
        ]
    );

    for i in 0..LOG_SIZE {
        store.create(pods(), pod(&format!("p{i}"))).unwrap();
    }
    assert_eq!(store.watch_from(1).unwrap_err().code, 410);
    assert!(store.watch_from(store.current_rv()).unwrap().0.is_empty());
}

#[test]
fn a_change_that_changes_nothing_records_nothing() {
    let store = Store::default();
    store.create(pods(), pod("a")).unwrap();
    let before = store.current_rv();
    store.modify(pods(), "demo", "a", |_| Ok(())).unwrap();
    assert_eq!(store.current_rv(), before);
}
