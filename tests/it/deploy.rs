//! The deployment files under `deploy/` checked by the real tools: Prometheus rules and their unit
//! tests (`promtool`), the dashboard's expressions against the metrics the code registers, the
//! Kubernetes manifests' cross-references and flags (against the CLI and config sources), and the
//! systemd units (`systemd-analyze verify`). Each checker is a script beside the files it checks
//! (so an operator can run it too); these tests run them and fail with what they printed.

use std::process::Command;

use crate::repo;

fn check(program: &str, args: &[&str]) {
    let o = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{program} {}:\n{said}", args.join(" "));
}

#[test]
fn prometheus_rules_pass_promtool_and_every_alert_fires_in_a_unit_test() {
    check("python3", &["deploy/prometheus/check.py"]);
}

#[test]
fn the_dashboard_and_rules_use_only_metrics_the_code_exports() {
    check(
        "python3",
        &["deploy/grafana/check_metrics.py", "--promtool"],
    );
}

#[test]
fn kubernetes_manifests_cross_reference_and_use_real_flags_and_keys() {
    check("python3", &["deploy/k8s/check.py"]);
    // The checker itself fails on broken copies (selectors, ports, volumes, flags, quorum, …).
    check("python3", &["deploy/k8s/check.py", "--self-test"]);
}

#[test]
fn systemd_units_verify_with_systemd_analyze() {
    check("sh", &["deploy/systemd/verify.sh"]);
}
