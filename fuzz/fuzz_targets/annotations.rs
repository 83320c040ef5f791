//! The pod annotations the injector reads, and the port and CIDR lists
//! inside them: any text gives values or warnings, never a panic, and a
//! port list that parses prints back to the same set.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strait_contract::PortSet;
use strait_contract::names::annotations as key;

const KEYS: &[&str] = &[
    key::SKIP_INBOUND_PORTS,
    key::SKIP_OUTBOUND_PORTS,
    key::SKIP_OUTBOUND_CIDRS,
    key::OPAQUE_PORTS,
    key::PROXY_LOG_LEVEL,
    key::INBOUND_MODE,
    key::MTLS,
    key::PROXY_CPU_REQUEST,
    key::PROXY_MEMORY_LIMIT,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ports) = PortSet::parse(text) {
        let printed = ports.to_string();
        assert_eq!(
            PortSet::parse(&printed).as_ref(),
            Ok(&ports),
            "{text:?} printed as {printed:?}"
        );
    }
    let _ = strait_contract::cidrs::parse_cidrs(text);
    // Each line is the next annotation's value.
    let annotations: BTreeMap<String, String> = KEYS
        .iter()
        .zip(text.split('\n'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let (_, warnings) = strait_injector::inject::annotations::read(&annotations);
    for warning in warnings {
        assert!(warning.starts_with("annotation "), "{warning}");
    }
});
