use std::path::PathBuf;

use super::*;
use crate::config::{Args, Config};

fn config(args: Args) -> Config {
    Config::from_args(args, |_| None).unwrap()
}

/// Compares with `init/tests/golden/NAME`; `STRAIT_UPDATE_GOLDEN=1` rewrites it.
fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("STRAIT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with STRAIT_UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(actual, expected, "rules differ from {}", path.display());
}

#[test]
fn golden_rule_sets() {
    let some = |s: &str| Some(s.to_string());
    let cases = [
        ("defaults", Args::default()),
        (
            "skip-ports",
            Args {
                skip_inbound_ports: some("22,8000-8100"),
                skip_outbound_ports: some("3306,5432-5433"),
                ..Args::default()
            },
        ),
        (
            "skip-cidrs",
            Args {
                skip_outbound_cidrs: some("10.96.0.0/12,169.254.169.254,fd00::/8"),
                ..Args::default()
            },
        ),
        (
            "custom-ports-and-uid",
            Args {
                inbound_port: some("15006"),
                outbound_port: some("15001"),
                admin_port: some("15021"),
                proxy_uid: some("1337"),
                ..Args::default()
            },
        ),
    ];
    for (name, args) in cases {
        let config = config(args);
        for family in [Family::V4, Family::V6] {
            let rendered = render(&config, family, &Jumps::default());
            assert_golden(&format!("{name}.{}.rules", family.tool()), &rendered);
        }
    }
}

#[test]
fn existing_jumps_are_not_added_twice() {
    let config = config(Args::default());
    let first = render(&config, Family::V4, &Jumps::default());
    let saved = format!("*nat\n:STRAIT_INBOUND - [0:0]\n{INBOUND_JUMP}\n{OUTPUT_JUMP}\nCOMMIT\n");
    let again = render(&config, Family::V4, &Jumps::read(&saved));
    assert!(first.contains(INBOUND_JUMP) && first.contains(OUTPUT_JUMP));
    assert!(!again.contains(INBOUND_JUMP) && !again.contains(OUTPUT_JUMP));
}

#[test]
fn cleanup_removes_only_strait_rules() {
    let saved = "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:STRAIT_INBOUND - [0:0]
:STRAIT_OUTPUT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j STRAIT_INBOUND
-A PREROUTING -p tcp -j OTHER
-A OUTPUT -p tcp -j STRAIT_OUTPUT
-A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A OTHER -j RETURN
COMMIT
";
    let script = render_cleanup(saved).unwrap();
    assert_eq!(
        script,
        "*nat\n-D PREROUTING -p tcp -j STRAIT_INBOUND\n-D OUTPUT -p tcp -j STRAIT_OUTPUT\n\
         -F STRAIT_INBOUND\n-X STRAIT_INBOUND\n-F STRAIT_OUTPUT\n-X STRAIT_OUTPUT\nCOMMIT\n"
    );
    assert_eq!(render_cleanup("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"), None);
}

#[test]
fn differences_name_missing_rules_foreign_ones_and_jumps() {
    let config = config(Args::default());
    let applied = render(&config, Family::V4, &Jumps::default());
    assert!(differences(&config, Family::V4, &applied).is_empty());
    let redirect = "-A STRAIT_OUTPUT -p tcp -j REDIRECT --to-ports 4140";
    let without = applied.replace(&format!("{redirect}\n"), "");
    assert_eq!(differences(&config, Family::V4, &without), [redirect]);
    let foreign = applied.replace(
        "-A STRAIT_OUTPUT -d 127.0.0.0/8 -j RETURN\n",
        "-A STRAIT_OUTPUT -d 127.0.0.0/8 -j RETURN\n-A STRAIT_OUTPUT -j RETURN\n",
    );
    let found = differences(&config, Family::V4, &foreign);
    assert!(
        found.len() == 1 && found[0].starts_with("STRAIT_OUTPUT holds ["),
        "{found:?}"
    );
    let unjumped = applied.replace(&format!("{OUTPUT_JUMP}\n"), "");
    assert_eq!(differences(&config, Family::V4, &unjumped), [OUTPUT_JUMP]);
}

#[test]
fn a_skip_of_every_address_is_written_as_iptables_save_prints_it() {
    let config = config(Args {
        skip_outbound_cidrs: Some("0.0.0.0/0".into()),
        ..Args::default()
    });
    let rendered = render(&config, Family::V4, &Jumps::default());
    assert!(
        rendered.contains("-A STRAIT_OUTPUT -j RETURN\n") && !rendered.contains("0.0.0.0/0"),
        "{rendered}"
    );
}
