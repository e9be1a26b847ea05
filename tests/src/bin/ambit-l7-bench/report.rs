//! The L7 benchmark's table, and the waypoint set against each HAProxy row.

use crate::{
    load::median,
    measure::{FixedRate, Saturation, median_of},
};

pub struct Row {
    pub path: &'static str,
    saturation: Saturation,
    p50_us: f64,
    p99_us: f64,
    /// Over the direct path measured at the same time.
    added_p50_us: f64,
    added_p99_us: f64,
    /// Each fixed-rate run's added p99, in the order they ran.
    added_p99_runs: Vec<f64>,
    cpu_ms_per_1k_rps: Option<f64>,
    path_cpu_ms_per_1k_rps: Option<f64>,
    rss_mb: Option<f64>,
}

impl Row {
    pub fn new(
        path: &'static str,
        saturation: Saturation,
        mut fixed: FixedRate,
        rss_mb: Option<f64>,
    ) -> Row {
        let (cpu_ms_per_1k_rps, path_cpu_ms_per_1k_rps) = fixed.cpu_ms_per_1k_rps();
        let added_p99_runs = fixed.added_p99_us.clone();
        let median = |v: &mut Vec<f64>| median_of(v).unwrap_or(f64::NAN);
        let row = Row {
            path,
            saturation,
            p50_us: median(&mut fixed.p50_us),
            p99_us: median(&mut fixed.p99_us),
            added_p50_us: median(&mut fixed.added_p50_us),
            added_p99_us: median(&mut fixed.added_p99_us),
            added_p99_runs,
            cpu_ms_per_1k_rps,
            path_cpu_ms_per_1k_rps,
            rss_mb,
        };
        eprintln!(
            "  {path}: {:.0} req/s, p50 {:.0} us, p99 {:.0} us (added {:.0} / {:.0} us)",
            row.saturation.rps, row.p50_us, row.p99_us, row.added_p50_us, row.added_p99_us
        );
        row
    }
}

pub fn print_rows(rows: &[Row]) {
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "path",
        "sat. rps",
        "rps/core",
        "path rps/",
        "p50 us",
        "p99 us",
        "added p50",
        "added p99",
        "CPU ms/",
        "path CPU",
        "RSS MB"
    );
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "", "", "", "core", "", "", "us", "us", "1k rps", "ms/1k rps", ""
    );
    let opt = |v: Option<f64>, places: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
    };
    for row in rows {
        println!(
            "{:<15} {:>10.0} {:>10} {:>10} {:>8.0} {:>8.0} {:>9.0} {:>9.0} {:>9} {:>9} {:>7}",
            row.path,
            row.saturation.rps,
            opt(row.saturation.rps_per_core, 0),
            opt(row.saturation.path_rps_per_core, 0),
            row.p50_us,
            row.p99_us,
            row.added_p50_us,
            row.added_p99_us,
            opt(row.cpu_ms_per_1k_rps, 1),
            opt(row.path_cpu_ms_per_1k_rps, 1),
            opt(row.rss_mb, 1)
        );
    }
    let find = |path: &str| rows.iter().find(|r| r.path == path);
    let Some(waypoint) = find("waypoint") else {
        return;
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.unwrap_or(f64::NAN) / b.unwrap_or(f64::NAN);
    for (haproxy, how) in [
        (find("haproxy (mesh)"), "on the same topology, in the mesh"),
        (find("haproxy"), "plain, outside the mesh, no TLS"),
    ] {
        let Some(h) = haproxy else { continue };
        println!(
            "waypoint / {} ({how}): req/s per core {:.2}x (path {:.2}x), saturation {:.2}x, added p50 {:.0} vs {:.0} us, added p99 {:.0} vs {:.0} us, CPU per 1k req/s {:.2}x (path {:.2}x)",
            h.path,
            ratio(waypoint.saturation.rps_per_core, h.saturation.rps_per_core),
            ratio(
                waypoint.saturation.path_rps_per_core,
                h.saturation.path_rps_per_core
            ),
            waypoint.saturation.rps / h.saturation.rps,
            waypoint.added_p50_us,
            h.added_p50_us,
            waypoint.added_p99_us,
            h.added_p99_us,
            ratio(waypoint.cpu_ms_per_1k_rps, h.cpu_ms_per_1k_rps),
            ratio(waypoint.path_cpu_ms_per_1k_rps, h.path_cpu_ms_per_1k_rps),
        );
    }
    if let Some(h) = find("haproxy (mesh)") {
        print_rounds(waypoint, h);
    }
    if let Some(l4) = find("hbone (L4)") {
        println!(
            "the waypoint's own share (waypoint minus hbone): added p50 {:.0} us, p99 {:.0} us",
            waypoint.added_p50_us - l4.added_p50_us,
            waypoint.added_p99_us - l4.added_p99_us
        );
    }
}

/// The added p99 of the waypoint and of HAProxy in the mesh round by round (their
/// fixed-rate runs alternate), and the median of the waypoint's lead.
fn print_rounds(waypoint: &Row, haproxy: &Row) {
    let runs = |row: &Row| {
        row.added_p99_runs
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut leads: Vec<f64> = haproxy
        .added_p99_runs
        .iter()
        .zip(&waypoint.added_p99_runs)
        .map(|(h, w)| h - w)
        .collect();
    if leads.is_empty() {
        return;
    }
    let lower = leads.iter().filter(|lead| **lead >= 0.0).count();
    println!(
        "added p99 by round (us): waypoint {}; haproxy (mesh) {}; the waypoint's no higher in {lower} of {} rounds, median lead {:.0} us",
        runs(waypoint),
        runs(haproxy),
        leads.len(),
        median(&mut leads)
    );
}
