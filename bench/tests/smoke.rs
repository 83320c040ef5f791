//! Keeps the benchmark working: its quick mode on one scenario, on a lab of
//! its own. The figures are never asserted, only that the report is made.

use std::process::Command;

#[test]
fn the_quick_mode_runs_a_scenario_and_writes_the_report() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    if !root {
        assert!(
            std::env::var_os("STRAIT_CI").is_none(),
            "STRAIT_CI is set but the tests do not run as root"
        );
        eprintln!("SKIPPED: the benchmark smoke test needs root (it runs a lab)");
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("strait-bench-smoke-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_strait-bench"))
        .args(["run", "--quick", "--only", "balance", "--out"])
        .arg(&out_dir)
        .env("STRAIT_BENCH_LAB", "t-bench-smoke")
        .output()
        .expect("strait-bench runs");
    let report = std::fs::read_to_string(out_dir.join("REPORT.md")).unwrap_or_default();
    let results = std::fs::read_to_string(out_dir.join("results.json")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        out.status.success(),
        "strait-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("## Balance: one client connection over 5 equal pods"),
        "{report}"
    );
    assert!(
        report.contains("| strait | 5 |"),
        "strait's row, with all five pods answering:\n{report}"
    );
    assert!(results.contains("\"balance\""), "{results}");
}
