//! The inbound mesh listener's look at a TLS ClientHello before answering
//! it: any bytes, truncated or oversized hellos included, end in a refusal
//! or an admission, never a panic, and only a hello naming this workload
//! with the mesh protocol is admitted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::server::Acceptor;
use strait_proxy::admit_hello;

const EXPECTED: &str = "web.demo.serviceaccount.identity.cluster.local";

fuzz_target!(|data: &[u8]| {
    let mut acceptor = Acceptor::default();
    let mut input = data;
    while !input.is_empty() {
        match acceptor.read_tls(&mut input) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if let Ok(Some(accepted)) = acceptor.accept() {
        let hello = accepted.client_hello();
        if admit_hello(&hello, EXPECTED).is_ok() {
            assert_eq!(hello.server_name(), Some(EXPECTED));
        }
    }
});
