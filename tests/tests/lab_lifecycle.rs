//! `strait-lab up` and `down` leave the machine as they found it, also after
//! the lab's daemon crashed.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::Command;

use support::{Lab, require_root};

fn netns_and_links(lab: &str) -> (String, String) {
    let run = |args: &[&str]| String::from_utf8(Command::new("ip").args(args).output().unwrap().stdout).unwrap();
    let mut netns: Vec<String> = run(&["netns", "list"])
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    netns.sort();
    // Other tests run labs in parallel; only this lab's names matter.
    netns.retain(|n| n.starts_with(&format!("{lab}_")));
    let links: Vec<String> = run(&["-o", "link"])
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        .collect();
    (netns.join(","), links.join(","))
}

#[test]
fn down_after_up_leaves_namespaces_links_and_processes_as_before() {
    if require_root("lab_lifecycle").is_none() {
        return;
    }
    let before = netns_and_links("t-lab-lifecycle");
    let lab = Lab::up("lab-lifecycle", &["tcp-echo.yaml"]).unwrap();
    assert!(netns_and_links(&lab.name).0.contains("t-lab-lifecycle_node"));

    // Clients that hang up before their answers are written: the daemon
    // then writes into closed sockets, which must be an error it handles,
    // not a signal that ends the lab (SIGPIPE's default action did, and
    // took down a lab in CI as it started).
    let socket = format!("/run/strait-lab/{}/api.sock", lab.name);
    for _ in 0..20 {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream
            .write_all(b"GET /api/v1/pods HTTP/1.1\r\nHost: lab\r\n\r\n")
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let status = lab.cli(&["status"]);
    assert!(
        status.status.success(),
        "the lab outlives clients that hang up: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    lab.down();
    assert_eq!(netns_and_links(&lab.name), before);
    assert!(!std::path::Path::new(&format!("/run/strait-lab/{}", lab.name)).exists());
    lab.down();
    assert_eq!(netns_and_links(&lab.name), before, "a second down must be harmless");
}

#[test]
fn down_cleans_up_after_a_crashed_lab() {
    if require_root("lab_lifecycle_crash").is_none() {
        return;
    }
    let before = netns_and_links("t-lab-lifecycle-crash");
    let lab = Lab::up("lab-lifecycle-crash", &["tcp-echo.yaml"]).unwrap();
    let state = format!("/run/strait-lab/{}", lab.name);
    let mut pids: Vec<String> = vec![
        std::fs::read_to_string(format!("{state}/daemon.pid"))
            .unwrap()
            .trim()
            .to_string(),
    ];
    for pod in std::fs::read_dir(format!("{state}/pods")).unwrap().flatten() {
        for file in std::fs::read_dir(pod.path()).unwrap().flatten() {
            if file.file_name().to_string_lossy().ends_with(".pid") {
                pids.push(std::fs::read_to_string(file.path()).unwrap().trim().to_string());
            }
        }
    }
    assert!(pids.len() > 5, "the lab's processes: {pids:?}");
    assert!(Command::new("kill").args(["-9", &pids[0]]).status().unwrap().success());
    lab.down();
    assert_eq!(netns_and_links(&lab.name), before);
    // Zombies only wait for their reaper: they count as gone.
    let alive: Vec<&String> = pids
        .iter()
        .filter(|pid| strait_lab::kubelet::sandbox::is_running(pid.parse().unwrap()))
        .collect();
    assert!(alive.is_empty(), "processes of the crashed lab still run: {alive:?}");
}
