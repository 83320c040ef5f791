//! strait-init against real iptables, in a throwaway network namespace.
//! Needs root; skips loudly elsewhere, and never skips when STRAIT_CI is set.

use std::process::{Command, Output};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
        if !is_root {
            assert!(
                std::env::var_os("STRAIT_CI").is_none(),
                "STRAIT_CI is set but the tests do not run as root"
            );
            eprintln!("SKIPPED: {tag} needs root (network namespaces and iptables)");
            return None;
        }
        let name = format!("strait-init-test-{tag}-{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "ip netns add {name}");
        let netns = Netns(name);
        netns.sh("ip link set lo up");
        Some(netns)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    fn sh(&self, script: &str) -> String {
        let out = self.run("sh", &["-c", script]);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn init(&self, args: &[&str]) -> Output {
        self.run(env!("CARGO_BIN_EXE_strait-init"), args)
    }

    /// The nat tables of both families, without the timestamp comments.
    fn nat_rules(&self) -> String {
        self.sh("iptables-save -t nat; ip6tables-save -t nat")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

#[test]
fn apply_is_idempotent_and_cleanup_restores_the_namespace() {
    let Some(ns) = Netns::new("idem") else { return };
    ns.sh("ip -6 addr add fd00::1/64 dev lo");
    // Somebody else's rule must survive everything strait-init does.
    ns.sh("iptables -t nat -N OTHER && iptables -t nat -A OUTPUT -p tcp -j OTHER");
    let pristine = ns.nat_rules();

    let args = [
        "--skip-inbound-ports",
        "22",
        "--skip-outbound-cidrs",
        "10.0.0.0/8,fd00::/8",
    ];
    assert!(ns.init(&args).status.success());
    let once = ns.nat_rules();
    // What strait-cni's CHECK compares: the rules as iptables-save prints them.
    let config = strait_init::Config::from_args(
        strait_init::Args {
            skip_inbound_ports: Some("22".into()),
            skip_outbound_cidrs: Some("10.0.0.0/8,fd00::/8".into()),
            ..Default::default()
        },
        |_| None,
    )
    .unwrap();
    for family in [strait_init::Family::V4, strait_init::Family::V6] {
        let saved = ns.sh(&format!("{}-save -t nat", family.tool()));
        let differences = strait_init::rules::differences(&config, family, &saved);
        assert!(differences.is_empty(), "{family:?}: {differences:?}");
    }
    assert!(ns.init(&args).status.success());
    assert_eq!(ns.nat_rules(), once, "a second run changed the rules");
    assert!(once.contains("-A STRAIT_OUTPUT -d 10.0.0.0/8 -j RETURN"), "{once}");
    assert!(once.contains("-A STRAIT_OUTPUT -d fd00::/8 -j RETURN"), "{once}");
    assert!(
        once.contains("-A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 4143"),
        "{once}"
    );

    assert!(ns.init(&["--cleanup"]).status.success());
    assert_eq!(ns.nat_rules(), pristine, "cleanup left something behind");
    assert!(
        ns.init(&["--cleanup"]).status.success(),
        "a second cleanup must succeed"
    );
}

#[test]
fn bad_input_applies_nothing() {
    let Some(ns) = Netns::new("bad") else { return };
    let pristine = ns.nat_rules();
    for args in [
        &["--skip-inbound-ports", "70000"][..],
        &["--skip-outbound-ports", "abc"],
        &["--skip-outbound-cidrs", "10.0.0/8x"],
        &["--skip-outbound-ports", "90-80"],
    ] {
        let out = ns.init(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains(args[1]),
            "{args:?}: error does not name the value: {stderr}"
        );
        assert_eq!(ns.nat_rules(), pristine, "{args:?} changed the rules");
    }
}

#[test]
fn the_redirects_send_traffic_to_the_proxy_ports() {
    let Some(ns) = Netns::new("redirect") else {
        return;
    };
    ns.sh("ip link add v0 type veth peer name v1 && ip addr add 198.18.7.1/24 dev v0 && ip link set v0 up && ip link set v1 up");
    assert!(
        ns.init(&["--skip-outbound-ports", "9999", "--ipv6", "off"])
            .status
            .success()
    );
    // Outbound to a non-local address lands on 4140; a skipped port does not.
    let probe = r#"python3 - <<'PY'
import socket, threading
def serve(port, seen):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8); s.settimeout(3)
    try:
        c, _ = s.accept(); seen.append(port); c.close()
    except OSError:
        pass
seen = []
threads = [threading.Thread(target=serve, args=(p, seen)) for p in (4140, 9999)]
[t.start() for t in threads]
import time; time.sleep(0.2)
for port in (80, 9999):
    c = socket.socket(); c.settimeout(2)
    try:
        c.connect(("198.18.7.2", port))
    except OSError:
        pass
    c.close()
[t.join() for t in threads]
print(sorted(seen))
PY"#;
    // 198.18.7.2 does not exist: only a redirect can make these connects land.
    assert_eq!(ns.sh(probe).trim(), "[4140]");
}
