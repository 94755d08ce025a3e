//! Inline SVG charts for the monitor: stacked bars of images done and failed per bucket of
//! time. Only numbers and times we format go into the markup, so it needs no escaping; colours
//! are presentation attributes (the page's CSP forbids inline styles).

use std::fmt::Write;

use chrono::{DateTime, Utc};
use jobs::stats::Bucket;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
/// Room for the labels: left (the scale), bottom (the times).
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

const DONE: &str = "#2f7d4f";
const FAILED: &str = "#b3261e";
const AXIS: &str = "#767676";

/// Stacked bars of `series` (images done below, failed above), titled `title` for screen
/// readers; each bar says its counts on hover.
pub fn images_per_bucket(series: &[Bucket], bucket_seconds: i64, title: &str) -> String {
    let mut svg = String::new();
    let max = series
        .iter()
        .map(|b| b.images_done + b.images_failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / series.len().max(1) as f64;
    let bar = (slot * 0.8).max(1.0);
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg"><title>{title}</title>"#
    );
    // The scale: zero and the top.
    let base = TOP + plot_h;
    let _ = write!(
        svg,
        r#"<line x1="{LEFT}" y1="{base}" x2="{}" y2="{base}" stroke="{AXIS}" stroke-width="1"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="{AXIS}" stroke-width="1"/><text x="{}" y="{}" font-size="11" text-anchor="end" fill="{AXIS}">{max}</text><text x="{}" y="{base}" font-size="11" text-anchor="end" fill="{AXIS}">0</text>"#,
        WIDTH - 4.0,
        LEFT - 4.0,
        TOP + 10.0,
        LEFT - 4.0,
    );
    for (i, b) in series.iter().enumerate() {
        let x = LEFT + i as f64 * slot + (slot - bar) / 2.0;
        let done_h = plot_h * b.images_done as f64 / max as f64;
        let failed_h = plot_h * b.images_failed as f64 / max as f64;
        let label = format!(
            "{}: {} done, {} failed",
            when(b.start, bucket_seconds),
            b.images_done,
            b.images_failed
        );
        let _ = write!(svg, "<g><title>{label}</title>");
        if b.images_done > 0 {
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{done_h:.1}" fill="{DONE}"/>"#,
                base - done_h
            );
        }
        if b.images_failed > 0 {
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{failed_h:.1}" fill="{FAILED}"/>"#,
                base - done_h - failed_h
            );
        }
        svg.push_str("</g>");
    }
    // Times under the first, middle and last bars.
    if let (Some(first), Some(last)) = (series.first(), series.last()) {
        let middle = &series[series.len() / 2];
        for (b, anchor, x) in [
            (first, "start", LEFT),
            (middle, "middle", LEFT + plot_w / 2.0),
            (last, "end", WIDTH - 4.0),
        ] {
            let _ = write!(
                svg,
                r#"<text x="{x:.1}" y="{}" font-size="11" text-anchor="{anchor}" fill="{AXIS}">{}</text>"#,
                HEIGHT - 6.0,
                when(b.start, bucket_seconds)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A bucket's start as the chart says it: the time for minutes and hours, the date for days.
fn when(start: DateTime<Utc>, bucket_seconds: i64) -> String {
    if bucket_seconds >= 86_400 {
        start.format("%Y-%m-%d").to_string()
    } else if bucket_seconds >= 3600 {
        start.format("%m-%d %H:00").to_string()
    } else {
        start.format("%H:%M").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_failed_over_done_and_scale_to_the_largest() {
        let t = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let series = vec![
            Bucket {
                start: t,
                images_done: 10,
                images_failed: 0,
                batches: 1,
            },
            Bucket {
                start: t + chrono::Duration::minutes(1),
                images_done: 5,
                images_failed: 5,
                batches: 0,
            },
        ];
        let svg = images_per_bucket(&series, 60, "Images per minute");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert!(svg.contains("10:01: 5 done, 5 failed"), "{svg}");
        // The top of the scale is the largest bar.
        assert!(svg.contains(">10</text>"), "{svg}");
        assert!(
            !svg.contains("style="),
            "inline styles break the CSP: {svg}"
        );
    }
}
