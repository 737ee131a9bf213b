//! The deployment files must not drift from the code: every metric the
//! Grafana dashboard (deploy/grafana/poolflow.json) and the Prometheus
//! alerts (deploy/poolflow-alerts.yml) query must be one the daemons really
//! register (a `counter!`/`gauge!`/`histogram!` with that name somewhere in
//! the workspace's sources), and the dashboard must be importable JSON that
//! covers what an operator of a billing pool watches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Rust sources of the workspace's crates (not build output, not the
/// vendored third-party code).
fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && !name.starts_with("target") && name != "vendor" {
                rust_sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Names of the metrics registered in `source`: the string literal that
/// opens each `counter!(`, `gauge!(` or `histogram!(` call.
fn registered_in(source: &str) -> Vec<(String, &'static str)> {
    let mut names = Vec::new();
    for kind in ["counter", "gauge", "histogram"] {
        let opener = format!("{kind}!(");
        for (at, _) in source.match_indices(&opener) {
            let rest = source[at + opener.len()..].trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                let end = literal.find('"').expect("closed string literal");
                names.push((literal[..end].to_owned(), kind));
            }
        }
    }
    names
}

/// Every metric registered in the workspace, with its kind.
fn registered_metrics() -> Vec<(String, &'static str)> {
    let root = workspace_root();
    let mut files = Vec::new();
    for member in [
        "protocol",
        "transport",
        "policies",
        "asap-client",
        "registrar",
        "collector",
        "exporter",
    ] {
        rust_sources(&root.join(member).join("src"), &mut files);
    }
    let mut names: Vec<(String, &'static str)> = files
        .iter()
        .flat_map(|f| registered_in(&std::fs::read_to_string(f).unwrap()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The series a metric of `kind` puts on the Prometheus endpoint: a
/// histogram is rendered as a summary (`name{quantile}`, `_sum`, `_count`)
/// or, with buckets configured, `_bucket`.
fn exposed_series(name: &str, kind: &str) -> Vec<String> {
    let mut series = vec![name.to_owned()];
    if kind == "histogram" {
        for suffix in ["_sum", "_count", "_bucket"] {
            series.push(format!("{name}{suffix}"));
        }
    }
    series
}

/// `poolflow_…` metric names used in a PromQL expression.
fn metrics_in_expression(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in expr.match_indices("poolflow_") {
        // Part of a longer identifier (e.g. a label value): not a metric.
        if expr[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"' || c == '-')
        {
            continue;
        }
        let name: String = expr[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// Every `expr` of every panel, rows' nested panels included.
fn dashboard_expressions(panels: &[Value], out: &mut Vec<(String, String)>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        if let Some(targets) = panel["targets"].as_array() {
            for target in targets {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: target without expr"));
                out.push((title.clone(), expr.to_owned()));
            }
        }
        if let Some(nested) = panel["panels"].as_array() {
            dashboard_expressions(nested, out);
        }
    }
}

fn load_dashboard() -> Value {
    let path = workspace_root().join("deploy/grafana/poolflow.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_all_registered(file: &str, uses: &[(String, String)]) {
    let registered = registered_metrics();
    assert!(
        registered.len() >= 20,
        "found only {} registered metrics: is the source scan broken? {registered:?}",
        registered.len()
    );
    let known: BTreeSet<String> = registered
        .iter()
        .flat_map(|(name, kind)| exposed_series(name, kind))
        .collect();
    let mut unknown = Vec::new();
    for (context, expr) in uses {
        for metric in metrics_in_expression(expr) {
            if !known.contains(&metric) {
                unknown.push(format!("{context}: {metric}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{file} queries metrics no daemon registers:\n  {}",
        unknown.join("\n  ")
    );
}

#[test]
fn the_source_scan_finds_metric_registrations() {
    let found = registered_in(
        r#"metrics::counter!("a_total", "reason" => r).increment(1);
           gauge!(
               "b_now").set(1.0); histogram!("c_seconds").record(0.1);
           let s = "counter!(not_a_literal)";"#,
    );
    assert_eq!(
        found,
        vec![
            ("a_total".to_owned(), "counter"),
            ("b_now".to_owned(), "gauge"),
            ("c_seconds".to_owned(), "histogram"),
        ]
    );
    assert_eq!(
        metrics_in_expression(
            r#"sum by (x) (rate(poolflow_a_total{job="poolflow-collector"}[5m])) / poolflow_b"#
        ),
        BTreeSet::from(["poolflow_a_total".to_owned(), "poolflow_b".to_owned()])
    );
}

#[test]
fn dashboard_queries_only_metrics_the_daemons_register() {
    let dashboard = load_dashboard();
    let mut uses = Vec::new();
    dashboard_expressions(dashboard["panels"].as_array().expect("panels"), &mut uses);
    assert!(uses.len() >= 20, "only {} expressions", uses.len());
    // Template variables query metrics too (label_values(...)).
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            uses.push((format!("variable {}", variable["name"]), query.to_owned()));
        }
    }
    assert_all_registered("deploy/grafana/poolflow.json", &uses);
}

#[test]
fn dashboard_covers_what_a_billing_pool_operator_watches() {
    let dashboard = load_dashboard();
    let mut uses = Vec::new();
    dashboard_expressions(dashboard["panels"].as_array().expect("panels"), &mut uses);
    let used: BTreeSet<String> = uses
        .iter()
        .flat_map(|(_, expr)| metrics_in_expression(expr))
        .collect();
    for needed in [
        "poolflow_collector_records_received_total", // ingest rate
        "poolflow_collector_records_stored_total",
        "poolflow_collector_commit_seconds", // commit latency
        "poolflow_collector_sequence_lost_records_total", // sequence gaps
        "poolflow_exporter_cookie_lag_records",
        "poolflow_exporter_failovers_total",
        "poolflow_exporter_failbacks_total",
        "poolflow_exporter_replay_buffer_records",
        "poolflow_registrar_pool_elements", // handlespace size
        "poolflow_registrar_enrp_peers_alive",
        "poolflow_collector_decode_errors_total", // malformed input by reason
        "poolflow_registrar_malformed_total",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn dashboard_is_importable_with_a_datasource_variable() {
    let dashboard = load_dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["uid"], "poolflow");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut ids = BTreeSet::new();
    let mut query_panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().expect("numeric panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {id} wider than the grid");
        if panel["type"] == "row" {
            continue;
        }
        query_panels += 1;
        // Every query goes to the chosen data source, none to a fixed one.
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {id}");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {id}");
        }
    }
    assert!(query_panels >= 15);
}

/// deploy/poolflow-alerts.yml: the `expr:` lines (one line each there).
#[test]
fn alert_rules_query_only_metrics_the_daemons_register() {
    let path = workspace_root().join("deploy/poolflow-alerts.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let uses: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("expr:"))
        .map(|expr| ("alert".to_owned(), expr.trim().to_owned()))
        .collect();
    assert!(
        uses.iter()
            .any(|(_, expr)| !metrics_in_expression(expr).is_empty()),
        "no poolflow metric found in the alert rules: is the parsing broken?"
    );
    assert_all_registered("deploy/poolflow-alerts.yml", &uses);
}

/// The packaged deploy/collector.toml with the commented `[pool]` example
/// switched on as its comment tells an operator to: `[pool]`, `handle`,
/// `registrars` and `advertise` uncommented (the other keys are options,
/// some of them alternatives to each other).
fn collector_pool_example() -> collector::config::CollectorConfig {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/collector.toml")).unwrap();
    let section = text
        .split("# [pool]\n")
        .nth(1)
        .expect("deploy/collector.toml has a commented [pool] section");
    let section = section.split("\n# [postgres]").next().unwrap_or(section);
    // The packaged listeners, then the example's keys.
    let mut enabled: String = text
        .split("# [pool]\n")
        .next()
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .map(|line| format!("{line}\n"))
        .collect();
    enabled.push_str("[pool]\n");
    for line in section.lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let key: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if ["handle", "registrars", "advertise"].contains(&key.as_str())
            && rest[key.len()..].starts_with(" = ")
        {
            enabled.push_str(rest);
            enabled.push('\n');
        }
    }
    collector::config::CollectorConfig::from_toml(&enabled).unwrap()
}

/// An operator who installs the three packages and uncomments the
/// collector's `[pool]` example joins the pool the packaged exporter.toml
/// looks for, through the registrar.toml listeners, and tells exporters an
/// address although the packaged SCTP listener is a wildcard.
#[test]
fn the_collector_pool_example_joins_the_packaged_pool() {
    let root = workspace_root();
    let pool = collector_pool_example().pool.expect("[pool] parsed");
    let exporter: toml::Value = toml::from_str(
        &std::fs::read_to_string(root.join("exporter/exporter.toml.example")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        Some(pool.handle.as_str()),
        exporter["pool_handle"].as_str(),
        "the collector's example handle is not the exporters' pool_handle"
    );
    let exporter_registrars: Vec<&str> = exporter["registrars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(pool.registrars, exporter_registrars);
    let registrar: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("deploy/registrar.toml")).unwrap())
            .unwrap();
    for (kind, listener) in [("tcp:", "tcp"), ("sctp:", "sctp_over_udp")] {
        let port = registrar["listen"][listener]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            pool.registrars
                .iter()
                .any(|r| r.starts_with(kind) && r.ends_with(&format!(":{port}"))),
            "no {kind} registrar on registrar.toml's port {port}: {:?}",
            pool.registrars
        );
    }
    let config = collector_pool_example();
    assert!(
        config.sctp_listen.iter().all(|a| a.ip().is_unspecified()),
        "the packaged sctp_listen changed: revisit the advertise comment"
    );
    let advertised =
        collector::pool::advertised_endpoint(&pool, &config.sctp_listen, &config.framed_tcp_listen)
            .expect("the example advertises an address with the packaged wildcard listener");
    assert_eq!(advertised.addr().port(), config.sctp_listen[0].port());
}
