use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

#[test]
fn defaults_follow_the_design() {
    let config = Config::from_args(Args::default(), |_| None).unwrap();
    assert_eq!(
        (
            config.inbound_port,
            config.outbound_port,
            config.admin_port,
            config.proxy_uid
        ),
        (4143, 4140, 4191, 2102)
    );
    assert_eq!(config.action, Action::Apply);
    assert_eq!(config.backend, Backend::Auto);
}

#[test]
fn env_is_read_and_flags_win() {
    let env = env_of(&[
        ("STRAIT_SKIP_INBOUND_PORTS", "22"),
        ("STRAIT_SKIP_OUTBOUND_PORTS", "5432"),
        ("STRAIT_IPTABLES_MODE", "legacy"),
    ]);
    let args = Args {
        skip_inbound_ports: Some("8080".into()),
        ..Args::default()
    };
    let config = Config::from_args(args, env).unwrap();
    assert_eq!(config.skip_inbound_ports.to_string(), "8080");
    assert_eq!(config.skip_outbound_ports.to_string(), "5432");
    assert_eq!(config.backend, Backend::Legacy);
}

#[test]
fn bad_values_name_the_setting_and_the_value() {
    let cases: [(&'static [(&str, &str)], &str); 6] = [
        (
            &[("STRAIT_SKIP_INBOUND_PORTS", "70000")],
            "STRAIT_SKIP_INBOUND_PORTS: invalid port \"70000\"",
        ),
        (
            &[("STRAIT_SKIP_OUTBOUND_PORTS", "abc")],
            "STRAIT_SKIP_OUTBOUND_PORTS: invalid port \"abc\"",
        ),
        (
            &[("STRAIT_SKIP_OUTBOUND_PORTS", "90-80")],
            "invalid port range \"90-80\"",
        ),
        (
            &[("STRAIT_SKIP_OUTBOUND_CIDRS", "10.0.0.0/99")],
            "STRAIT_SKIP_OUTBOUND_CIDRS: invalid CIDR \"10.0.0.0/99\"",
        ),
        (
            &[("STRAIT_IPTABLES_MODE", "iptables")],
            "expected one of auto, nft, legacy",
        ),
        (&[("STRAIT_PROXY_UID", "-1")], "STRAIT_PROXY_UID: invalid uid \"-1\""),
    ];
    for (env, expected) in cases {
        let error = Config::from_args(Args::default(), env_of(env)).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} should contain {expected:?}");
    }
}

#[test]
fn flag_errors_name_the_flag() {
    let args = Args {
        inbound_port: Some("0".into()),
        ..Args::default()
    };
    let error = Config::from_args(args, |_| None).unwrap_err().to_string();
    assert!(error.starts_with("--inbound-port: invalid port \"0\""), "{error}");
}

#[test]
fn families_follow_the_ipv6_mode() {
    let mut config = Config::from_args(Args::default(), |_| None).unwrap();
    assert_eq!(config.families(false), [Family::V4]);
    assert_eq!(config.families(true), [Family::V4, Family::V6]);
    config.ipv6 = Ipv6Mode::Off;
    assert_eq!(config.families(true), [Family::V4]);
}
