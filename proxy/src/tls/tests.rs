use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::testing::{Ca, id, mesh};
use super::*;

/// Handshakes `client` (expecting `expected`) with `server`; the server's
/// view of the client's identity, or the error.
async fn handshake(
    client: &MeshTls,
    expected: &SpiffeId,
    server: &MeshTls,
    sni: &str,
) -> Result<Vec<SpiffeId>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server());
    let server_side = tokio::spawn(async move {
        let mut stream = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        stream.write_all(b"ok").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let peer = stream.get_ref().1.peer_certificates().map(|c| c[0].clone());
        Ok::<_, String>(
            peer.map(|c: CertificateDer<'static>| verify::spiffe_ids(&c))
                .unwrap_or_default(),
        )
    });
    let connector = TlsConnector::from(client.client(expected).unwrap());
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let client_result = async {
        let mut stream = connector.connect(name, a).await.map_err(|e| e.to_string())?;
        stream.write_all(b"hello").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut reply = [0u8; 2];
        stream.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    let server_result = server_side.await.unwrap();
    match (client_result, server_result) {
        (Ok(()), server) => server,
        (Err(client), Err(server)) => Err(format!("client: {client}; server: {server}")),
        (Err(client), Ok(_)) => Err(client),
    }
}

#[tokio::test]
async fn peers_with_certificates_from_the_anchors_talk_and_learn_who_is_who() {
    let ca = Ca::new();
    let (web, api) = (id("web"), id("api"));
    let client = mesh(&web, &ca.pem(), ca.leaf(&web, -1, 1));
    let server = mesh(&api, &ca.pem(), ca.leaf(&api, -1, 1));
    let seen = handshake(&client, &api, &server, &api.server_name()).await.unwrap();
    assert_eq!(seen, [web]);
}

#[tokio::test]
async fn a_server_with_another_service_accounts_certificate_is_refused() {
    let ca = Ca::new();
    let (web, api, other) = (id("web"), id("api"), id("other"));
    let client = mesh(&web, &ca.pem(), ca.leaf(&web, -1, 1));
    // The server answers for api's name but holds other's certificate.
    let impostor = MeshTls::new(api.clone(), &ca.pem(), Arc::new(CurrentCert::default())).unwrap();
    impostor.current.set(ca.leaf(&other, -1, 1));
    let error = handshake(&client, &api, &impostor, &api.server_name())
        .await
        .unwrap_err();
    assert!(
        error.contains("WrongIdentity") && error.contains("\"other\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (ca, rogue) = (Ca::new(), Ca::new());
    let (web, api) = (id("web"), id("api"));
    let client = mesh(&web, &ca.pem(), rogue.leaf(&web, -1, 1));
    let server = mesh(&api, &ca.pem(), ca.leaf(&api, -1, 1));
    assert!(handshake(&client, &api, &server, &api.server_name()).await.is_err());
}

#[tokio::test]
async fn expired_certificates_are_refused_either_way() {
    let ca = Ca::new();
    let (web, api) = (id("web"), id("api"));
    let expired_server = mesh(&api, &ca.pem(), ca.leaf(&api, -3, -1));
    let client = mesh(&web, &ca.pem(), ca.leaf(&web, -1, 1));
    let error = handshake(&client, &api, &expired_server, &api.server_name())
        .await
        .unwrap_err();
    assert!(error.to_lowercase().contains("expired"), "{error}");

    let expired_client = mesh(&web, &ca.pem(), ca.leaf(&web, -3, -1));
    let server = mesh(&api, &ca.pem(), ca.leaf(&api, -1, 1));
    assert!(
        handshake(&expired_client, &api, &server, &api.server_name())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_handshake_for_another_workloads_name_is_refused() {
    let ca = Ca::new();
    let (web, api) = (id("web"), id("api"));
    let client = mesh(&web, &ca.pem(), ca.leaf(&web, -1, 1));
    let server = mesh(&api, &ca.pem(), ca.leaf(&api, -1, 1));
    assert!(
        handshake(&client, &api, &server, &id("db").server_name())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_rotation_of_the_anchors_reaches_both_sides_without_a_restart() {
    let (old, new) = (Ca::new(), Ca::new());
    let (web, api) = (id("web"), id("api"));
    let client = mesh(&web, &old.pem(), old.leaf(&web, -1, 1));
    let server = mesh(&api, &old.pem(), old.leaf(&api, -1, 1));
    // Both anchors first, everywhere: old and new certificates mix.
    let bundle = format!("{}{}", old.pem(), new.pem());
    for side in [&client, &server] {
        assert!(side.set_anchors(&bundle).unwrap());
        assert!(!side.set_anchors(&bundle).unwrap(), "the same anchors change nothing");
        assert_eq!(side.anchor_count(), 2);
    }
    client.current.set(new.leaf(&web, -1, 1));
    assert_eq!(
        handshake(&client, &api, &server, &api.server_name()).await.unwrap(),
        [web]
    );
    server.current.set(new.leaf(&api, -1, 1));
    // The client's cached configuration for api was dropped with the old trust.
    handshake(&client, &api, &server, &api.server_name()).await.unwrap();
    // The old anchor gone: only new certificates are taken.
    for side in [&client, &server] {
        side.set_anchors(&new.pem()).unwrap();
    }
    handshake(&client, &api, &server, &api.server_name()).await.unwrap();
    // A server still holding an old certificate is refused (a fresh one:
    // the first server's session tickets would resume without a certificate).
    let stale = mesh(&api, &bundle, old.leaf(&api, -1, 1));
    let error = handshake(&client, &api, &stale, &api.server_name()).await.unwrap_err();
    assert!(error.contains("invalid peer certificate"), "{error}");
    // Garbage keeps what is in use.
    assert!(client.set_anchors("not PEM").is_err());
    assert_eq!(client.anchor_count(), 1);
}
