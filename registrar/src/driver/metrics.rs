//! Prometheus gets the cores' own counters: the sans-IO server and ENRP
//! cores count in [`Counters`] and [`EnrpCounters`] (what `/status` and the
//! tests read) and touch no global; this publishes those numbers under the
//! metric names the dashboard and the alert rules use, each time `/metrics`
//! is scraped, so the two views can never disagree.

use metrics::{counter, gauge};

use crate::enrp::{EnrpCounters, EnrpStatus};
use crate::server::{Counters, Status};

/// Sets every registrar metric from a status snapshot of the core.
pub(super) fn publish(status: &Status) {
    gauge!("poolflow_registrar_pools").set(status.pool_count as f64);
    gauge!("poolflow_registrar_pool_elements").set(status.element_count as f64);
    publish_server(&status.counters);
    if let Some(enrp) = &status.enrp {
        publish_enrp(enrp);
    }
}

fn publish_server(c: &Counters) {
    counter!("poolflow_registrar_registrations_total", "result" => "new").absolute(c.registrations);
    counter!("poolflow_registrar_registrations_total", "result" => "updated")
        .absolute(c.reregistrations);
    counter!("poolflow_registrar_registrations_total", "result" => "rejected")
        .absolute(c.registration_rejects.values().sum());
    for (reason, n) in &c.registration_rejects {
        counter!("poolflow_registrar_registration_rejects_total", "reason" => reason.clone())
            .absolute(*n);
    }
    for (reason, n) in &c.deregistration_rejects {
        counter!("poolflow_registrar_deregistration_rejects_total", "reason" => reason.clone())
            .absolute(*n);
    }
    for (message, reasons) in &c.membership_refused {
        for (reason, n) in reasons {
            counter!("poolflow_registrar_membership_refused_total",
                "message" => message.clone(), "reason" => reason.clone())
            .absolute(*n);
        }
    }
    counter!("poolflow_registrar_handle_resolutions_total", "result" => "ok")
        .absolute(c.handle_resolutions - c.handle_resolutions_unknown_pool);
    counter!("poolflow_registrar_handle_resolutions_total", "result" => "unknown_pool")
        .absolute(c.handle_resolutions_unknown_pool);
    counter!("poolflow_registrar_keepalives_sent_total").absolute(c.keep_alives_sent);
    counter!("poolflow_registrar_keepalive_failures_total").absolute(c.keep_alive_failures);
    counter!("poolflow_registrar_unreachable_reports_total").absolute(c.unreachable_reports);
    counter!("poolflow_registrar_unreachable_probes_total").absolute(c.unreachable_probes);
    counter!("poolflow_registrar_unreachable_refuted_total").absolute(c.unreachable_refuted);
    for (reason, n) in &c.removals {
        counter!("poolflow_registrar_pe_removals_total", "reason" => reason.clone()).absolute(*n);
    }
    counter!("poolflow_registrar_rate_limited_total").absolute(c.rate_limited);
    for (reason, n) in &c.malformed {
        counter!("poolflow_registrar_malformed_total", "reason" => reason.clone()).absolute(*n);
    }
}

fn publish_enrp(status: &EnrpStatus) {
    // Peers not declared dead: the dashboard's "ENRP peers" panel.
    let alive = status.peers.iter().filter(|p| p.state != "dead").count();
    gauge!("poolflow_registrar_enrp_peers_alive").set(alive as f64);
    let c: &EnrpCounters = &status.counters;
    counter!("poolflow_registrar_enrp_peers_lost_total").absolute(c.peers_lost);
    counter!("poolflow_registrar_enrp_audit_mismatches_total").absolute(c.audit_mismatches);
    counter!("poolflow_registrar_enrp_takeovers_total").absolute(c.takeovers);
    counter!("poolflow_registrar_enrp_multicast_peers_learned_total")
        .absolute(c.multicast_peers_learned);
    for (cause, n) in &c.errors_received {
        counter!("poolflow_registrar_enrp_errors_received_total", "cause" => cause.clone())
            .absolute(*n);
    }
    for (reason, n) in &c.auth_rejected {
        counter!("poolflow_registrar_enrp_auth_rejected_total", "reason" => reason.clone())
            .absolute(*n);
    }
    for (reason, n) in &c.malformed {
        counter!("poolflow_registrar_enrp_malformed_total", "reason" => reason.clone())
            .absolute(*n);
    }
}
