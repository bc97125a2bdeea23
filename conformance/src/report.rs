//! The report of a run: `report.json` (an index of cases in the manner of Autobahn's), JUnit XML
//! for CI systems, `report.md` for people, and the summary table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::runner::CaseReport;
use crate::target::TargetInfo;
use crate::verdict::Verdict;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// Where the clauses are: the SPEC.md of this version.
    pub spec: String,
    pub target: TargetInfo,
    /// Start of the run, UTC, RFC 3339.
    pub started: String,
    pub duration_ms: f64,
    /// Cases by verdict.
    pub summary: BTreeMap<Verdict, usize>,
    /// Whether every case of the suite was run (a selection never certifies).
    pub whole_suite: bool,
    /// CERTIFIED, NOT CERTIFIED, or what a selection showed; with what was not checked.
    pub verdict: String,
    pub cases: Vec<CaseReport>,
}

impl Report {
    pub fn new(target: TargetInfo, started: SystemTime, took: Duration, cases: Vec<CaseReport>) -> Self {
        let mut summary = BTreeMap::new();
        for v in [Verdict::Pass, Verdict::NonStrict, Verdict::Fail, Verdict::Skip, Verdict::Error] {
            summary.insert(v, cases.iter().filter(|c| c.verdict == v).count());
        }
        Report {
            tool: "opof certify".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            spec: "conformance/SPEC.md".into(),
            target,
            started: rfc3339(started),
            duration_ms: (took.as_secs_f64() * 1e6).round() / 1e3,
            summary,
            whole_suite: true,
            verdict: String::new(),
            cases,
        }
        .with_verdict()
    }

    /// Marks the report as a selection of the suite (or the whole), and words its verdict.
    pub fn selection(mut self, whole: bool) -> Self {
        self.whole_suite = whole;
        self.with_verdict()
    }

    fn with_verdict(mut self) -> Self {
        self.verdict = self.verdict_line();
        self
    }

    /// Whether the run certifies the endpoint: the whole suite, no FAIL, no ERROR.
    pub fn certified(&self) -> bool {
        self.whole_suite && self.passed()
    }

    /// The verdict in words: CERTIFIED only for the whole suite with no FAIL or ERROR; a
    /// selection says how many cases ran and what they found; TLS left unchecked is named.
    pub fn verdict_line(&self) -> String {
        let n = self.cases.len();
        let bad = |v| self.summary.get(&v).copied().unwrap_or(0);
        let mut line = match (self.whole_suite, self.passed()) {
            (true, true) => "CERTIFIED: no FAIL, no ERROR".to_string(),
            (true, false) => {
                format!("NOT CERTIFIED: {} FAIL, {} ERROR", bad(Verdict::Fail), bad(Verdict::Error))
            }
            (false, true) => {
                format!("{n} {} run: no FAIL, no ERROR (a selection of the suite does not certify)", cases(n))
            }
            (false, false) => format!(
                "{n} {} run: {} FAIL, {} ERROR (a selection of the suite does not certify)",
                cases(n),
                bad(Verdict::Fail),
                bad(Verdict::Error)
            ),
        };
        let skipped = bad(Verdict::Skip);
        if skipped > 0 {
            line.push_str(&format!("; {skipped} SKIP"));
        }
        let tls: Vec<&str> = self
            .cases
            .iter()
            .filter(|c| c.clause == "CONN-3" || c.clause == "CONN-4")
            .filter(|c| c.verdict == Verdict::Skip)
            .map(|c| c.id.as_str())
            .collect();
        if !tls.is_empty() {
            line.push_str(&format!("; TLS not checked ({} SKIP)", tls.join(", ")));
        }
        line
    }

    /// Whether the run certifies: no FAIL and no ERROR.
    pub fn passed(&self) -> bool {
        !self.cases.iter().any(|c| c.verdict.is_failure())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// JUnit XML: one testsuite, one testcase per case; FAIL as failure, ERROR as error, SKIP as
    /// skipped with its reason; NON-STRICT passes with its tolerated differences in system-out.
    pub fn to_junit(&self) -> String {
        let count = |v| self.summary.get(&v).copied().unwrap_or(0);
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"opof certify\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            self.cases.len(),
            count(Verdict::Fail),
            count(Verdict::Error),
            count(Verdict::Skip),
            self.duration_ms / 1e3
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"openoffload conformance ({})\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\" timestamp=\"{}\">",
            xml(&self.target.address),
            self.cases.len(),
            count(Verdict::Fail),
            count(Verdict::Error),
            count(Verdict::Skip),
            self.duration_ms / 1e3,
            xml(&self.started)
        );
        for c in &self.cases {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{} {}\" time=\"{:.3}\"",
                xml(&c.clause),
                xml(&c.id),
                xml(&c.title),
                c.duration_ms / 1e3
            );
            let body = match c.verdict {
                Verdict::Pass => String::new(),
                Verdict::NonStrict => {
                    let t: Vec<String> =
                        c.tolerated.iter().map(|t| format!("NON-STRICT ({}): {}", t.profile, t.what)).collect();
                    format!("      <system-out>{}</system-out>\n", xml(&t.join("\n")))
                }
                Verdict::Fail => format!("      <failure message=\"{}\"/>\n", xml(&c.details)),
                Verdict::Error => format!("      <error message=\"{}\"/>\n", xml(&c.details)),
                Verdict::Skip => format!("      <skipped message=\"{}\"/>\n", xml(&c.details)),
            };
            if body.is_empty() {
                x.push_str("/>\n");
            } else {
                let _ = write!(x, ">\n{body}    </testcase>\n");
            }
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }

    /// A Markdown report: the target, the summary, a table of every case, then the details of
    /// every case that did not simply pass.
    pub fn to_markdown(&self) -> String {
        let t = &self.target;
        let mut m = String::new();
        let _ = writeln!(m, "# OpenOffload conformance report\n");
        let _ = writeln!(m, "| | |\n|---|---|");
        let _ = writeln!(m, "| target | {} ({:?}) |", md(&t.address), t.kind);
        let _ = writeln!(m, "| flavour | {} (served: {}) |", t.flavour, t.served_flavours.join(", "));
        let _ = writeln!(
            m,
            "| TLS | {} |",
            if t.mutual_tls {
                "mutual"
            } else if t.tls {
                "server"
            } else {
                "none"
            }
        );
        let capacity = match (t.capacity, t.capacity_learned) {
            (Some(c), false) => c.to_string(),
            (Some(c), true) => format!("{c} (learned by filling)"),
            (None, _) => "not stated, not learned".into(),
        };
        let _ = writeln!(m, "| capacity | {capacity} |");
        let _ = writeln!(m, "| time | {} |", if t.virtual_time { "virtual" } else { "real" });
        let _ = writeln!(m, "| traffic | {} |", md(&t.traffic));
        let profiles: Vec<String> = t.profiles.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(m, "| profiles | {} |", if profiles.is_empty() { "none".into() } else { profiles.join(", ") });
        if let Some(f) = &t.fault {
            let _ = writeln!(m, "| injected fault | {f} |");
        }
        let _ = writeln!(m, "| started | {} |", self.started);
        let _ = writeln!(m, "| duration | {:.1} s |", self.duration_ms / 1e3);
        let _ = writeln!(m, "| tool | {} {} |\n", self.tool, self.version);
        let verdict = format!("**{}**", self.verdict);
        let counts: Vec<String> = self.summary.iter().map(|(v, n)| format!("{v} {n}")).collect();
        let _ = writeln!(m, "{verdict} — {}\n", counts.join(" · "));
        let _ = writeln!(m, "| case | clause | title | verdict | ms |\n|---|---|---|---|---:|");
        for c in &self.cases {
            let _ =
                writeln!(m, "| {} | {} | {} | {} | {:.1} |", c.id, c.clause, md(&c.title), c.verdict, c.duration_ms);
        }
        let _ = writeln!(m, "\n## Cases\n");
        for c in &self.cases {
            let _ = writeln!(m, "### {} — {} ({})\n", c.id, md(&c.title), c.verdict);
            let _ = writeln!(m, "- clause: {}\n- procedure: {}\n- expected: {}", c.clause, c.procedure, c.expect);
            if !c.details.is_empty() {
                let _ = writeln!(m, "- **{}**: {}", c.verdict, md(&c.details));
            }
            for t in &c.tolerated {
                let _ = writeln!(m, "- tolerated ({}): {}", t.profile, md(&t.what));
            }
            for n in &c.notes {
                let _ = writeln!(m, "- note: {}", md(n));
            }
            for (k, v) in &c.measurements {
                let _ = writeln!(m, "- measured {}: {}", md(k), v);
            }
            if !c.evidence.is_empty() {
                let links: Vec<String> =
                    c.evidence.iter().map(|p| format!("[{}]({})", file_name(p), p.replace(' ', "%20"))).collect();
                let _ = writeln!(m, "- evidence (pcapng per port): {}", links.join(", "));
            }
            m.push('\n');
        }
        m
    }

    /// A self-contained HTML page: the same content as the Markdown report, verdicts coloured,
    /// and the summary's verdict counts as filters (tick a verdict to show its cases; without
    /// scripts every case shows). Evidence links are relative to the page's folder.
    pub fn to_html(&self) -> String {
        let t = &self.target;
        let mut h = String::from(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>OpenOffload conformance report</title>\n\
             <style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}\
             td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\
             .PASS{background:#d7f5d7}.NON-STRICT{background:#fff3c4}.FAIL{background:#f8d0d0}\
             .SKIP{background:#e8e8e8}.ERROR{background:#f0c0f0}code{font-size:90%}\
             #filters label{margin-right:1em;padding:.1em .4em;border-radius:.3em;cursor:pointer}</style></head><body>\n",
        );
        let _ = writeln!(h, "<h1>OpenOffload conformance report</h1>");
        let verdict = self.verdict.clone();
        let counts: Vec<String> = self.summary.iter().map(|(v, n)| format!("{v} {n}")).collect();
        let _ = writeln!(h, "<p id=\"verdict\"><strong>{}</strong> — {}</p>", xml(&verdict), xml(&counts.join(" · ")));
        // The filters: one per verdict that occurs, all ticked.
        let _ = write!(h, "<p id=\"filters\">show: ");
        for (v, n) in self.summary.iter().filter(|(_, n)| **n > 0) {
            let _ = write!(h, "<label class=\"{v}\"><input type=\"checkbox\" value=\"{v}\" checked> {v} ({n})</label>");
        }
        let _ = writeln!(h, "<span id=\"shown\"></span></p>");
        let _ = writeln!(h, "<table>");
        let profiles: Vec<String> = t.profiles.iter().map(|p| p.to_string()).collect();
        for (k, v) in [
            ("target", format!("{} ({:?})", t.address, t.kind)),
            ("flavour", format!("{} (served: {})", t.flavour, t.served_flavours.join(", "))),
            (
                "TLS",
                (if t.mutual_tls {
                    "mutual"
                } else if t.tls {
                    "server"
                } else {
                    "none"
                })
                .to_string(),
            ),
            ("capacity", t.capacity.map_or("not stated, not learned".into(), |c| c.to_string())),
            ("time", (if t.virtual_time { "virtual" } else { "real" }).to_string()),
            ("traffic", t.traffic.clone()),
            ("profiles", if profiles.is_empty() { "none".into() } else { profiles.join(", ") }),
            ("started", self.started.clone()),
            ("duration", format!("{:.1} s", self.duration_ms / 1e3)),
            ("tool", format!("{} {}", self.tool, self.version)),
        ] {
            let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", xml(&v));
        }
        let _ = writeln!(h, "</table>\n<h2>Cases</h2>\n<table>\n<tr><th>case</th><th>clause</th><th>title</th><th>verdict</th><th>ms</th><th>details</th></tr>");
        for c in &self.cases {
            let mut details = vec![c.details.clone()];
            details.extend(c.tolerated.iter().map(|t| format!("tolerated ({}): {}", t.profile, t.what)));
            details.extend(c.notes.iter().map(|n| format!("note: {n}")));
            details.extend(c.measurements.iter().map(|(k, v)| format!("measured {k}: {v}")));
            let mut details: Vec<String> = details.into_iter().filter(|d| !d.is_empty()).map(|d| xml(&d)).collect();
            if !c.evidence.is_empty() {
                let links: Vec<String> =
                    c.evidence.iter().map(|p| format!("<a href=\"{}\">{}</a>", xml(p), xml(&file_name(p)))).collect();
                details.push(format!("evidence: {}", links.join(" ")));
            }
            let _ = writeln!(
                h,
                "<tr class=\"case {v}\" data-verdict=\"{v}\"><td id=\"{id}\"><code>{id}</code></td><td>{}</td><td title=\"{}\">{}</td><td>{v}</td><td>{:.1}</td><td>{}</td></tr>",
                xml(&c.clause),
                xml(&format!("{} — expected: {}", c.procedure, c.expect)),
                xml(&c.title),
                c.duration_ms,
                details.join("<br>"),
                v = c.verdict,
                id = xml(&c.id),
            );
        }
        h.push_str("</table>\n");
        h.push_str(
            "<script>\n\
             function applyFilters() {\n\
               const on = new Set([...document.querySelectorAll('#filters input:checked')].map(i => i.value));\n\
               const rows = [...document.querySelectorAll('tr.case')];\n\
               let shown = 0;\n\
               for (const r of rows) { r.hidden = !on.has(r.dataset.verdict); if (!r.hidden) shown++; }\n\
               document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' cases shown';\n\
             }\n\
             for (const i of document.querySelectorAll('#filters input')) i.addEventListener('change', applyFilters);\n\
             applyFilters();\n\
             </script>\n</body></html>\n",
        );
        h
    }

    /// The table printed at the end of a run.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        let w = self.cases.iter().map(|c| c.title.chars().count()).max().unwrap_or(10).min(70);
        for c in &self.cases {
            let title: String = c.title.chars().take(w).collect();
            let _ = writeln!(s, "{:<9} {:<w$}  {:<10} {:>9.1} ms", c.id, title, c.verdict, c.duration_ms);
            if c.verdict != Verdict::Pass && !c.details.is_empty() {
                let _ = writeln!(s, "{:<9} └ {}", "", c.details);
            }
        }
        let counts: Vec<String> = self.summary.iter().map(|(v, n)| format!("{v} {n}")).collect();
        let _ = writeln!(
            s,
            "\n{} cases against {} ({}): {}  —  {}",
            self.cases.len(),
            self.target.address,
            self.target.flavour,
            counts.join(", "),
            self.verdict
        );
        s
    }

    /// Writes report.json, junit.xml, report.md and report.html into `dir` (made if missing).
    /// Evidence paths inside `dir` are written relative to it, so the reports' links work
    /// wherever the folder is moved.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut r = self.clone();
        for c in &mut r.cases {
            for p in &mut c.evidence {
                if let Ok(rel) = Path::new(p.as_str()).strip_prefix(dir) {
                    *p = rel.display().to_string();
                }
            }
        }
        let files = [
            ("report.json", r.to_json()),
            ("junit.xml", r.to_junit()),
            ("report.md", r.to_markdown()),
            ("report.html", r.to_html()),
        ];
        let mut out = Vec::new();
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            out.push(p);
        }
        Ok(out)
    }
}

fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// The last part of an evidence path (`ext0.pcapng`), the text of its link.
fn file_name(p: &str) -> String {
    Path::new(p).file_name().map_or_else(|| p.to_string(), |n| n.to_string_lossy().to_string())
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `t` as `YYYY-MM-DDThh:mm:ssZ`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), by 400-year eras.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn cases(n: usize) -> &'static str {
    if n == 1 {
        "case"
    } else {
        "cases"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        let at = |s| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_750_000_000), "2025-06-15T15:06:40Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(xml("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot; ");
    }
}
