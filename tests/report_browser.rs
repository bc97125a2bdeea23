//! `report.html` in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs) renders a report of a run with a PASS and a FAIL and evidence files. In the page,
//! a script checks what a reader relies on — each verdict has its own colour, the summary names
//! the verdict and the counts, the verdict filters hide and show rows, every evidence link is
//! there — and the test checks that each evidence link resolves to a file beside the report.
//! A screenshot is saved and its path printed with the test output.
//!
//! Without a Chromium on the PATH the test is reported as ignored with that reason.

mod common;

use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn fail(m: impl Into<String>) -> Failed {
    Failed::from(m.into())
}

fn browser() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome", "chrome"]
        .into_iter()
        .find(|b| {
            Command::new("sh").arg("-c").arg(format!("command -v {b}")).output().is_ok_and(|o| o.status.success())
        })
        .map(String::from)
}

/// The checks, run in the page once it has loaded; the answer goes into `#browser-test`.
const PROBE: &str = r#"
<script>
(function () {
  const out = {};
  const rows = [...document.querySelectorAll('tr.case')];
  out.rows = rows.length;
  out.colours = {};
  for (const r of rows) out.colours[r.dataset.verdict] = getComputedStyle(r).backgroundColor;
  out.verdictLine = document.getElementById('verdict').textContent;
  out.shownBefore = document.getElementById('shown').textContent;
  const box = document.querySelector('#filters input[value="PASS"]');
  box.checked = false;
  box.dispatchEvent(new Event('change'));
  out.visibleWithoutPass = rows.filter(r => !r.hidden).map(r => r.dataset.verdict);
  out.shownAfter = document.getElementById('shown').textContent;
  box.checked = true;
  box.dispatchEvent(new Event('change'));
  out.visibleAgain = rows.filter(r => !r.hidden).length;
  out.evidence = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const pre = document.createElement('pre');
  pre.id = 'browser-test';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"#;

fn report_in_a_browser() -> Result<Completion, Failed> {
    let Some(chromium) = browser() else {
        return Ok(Completion::ignored_with("no Chromium on the PATH (apt-get install chromium; .ci/run installs it)"));
    };
    let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let out = dir.path().join("report");
    // DP-1 passes and writes evidence captures; DEL-3 fails against this defect.
    let run = common::opof()
        .args(["certify", "--case", "DP-1", "--case", "DEL-3", "--fault", "delete-queues-closed", "--out"])
        .arg(&out)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if run.status.code() != Some(1) {
        return Err(fail(format!(
            "certify: exit {:?}, want 1 (a FAIL)\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        )));
    }
    let page = std::fs::read_to_string(out.join("report.html")).map_err(|e| fail(e.to_string()))?;
    let probed = out.join("probed.html");
    std::fs::write(&probed, page.replace("</body>", &format!("{PROBE}</body>"))).map_err(|e| fail(e.to_string()))?;
    let headless = |extra: &[&str], url: &std::path::Path| {
        Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(extra)
            .arg(format!("file://{}", url.display()))
            .output()
            .map_err(|e| fail(format!("{chromium}: {e}")))
    };
    let dom = headless(&["--dump-dom"], &probed)?;
    let dom = String::from_utf8_lossy(&dom.stdout);
    let json =
        dom.split("<pre id=\"browser-test\">").nth(1).and_then(|r| r.split("</pre>").next()).ok_or_else(|| {
            fail(format!("the page's checks did not run; the browser gave:\n{}", &dom[..dom.len().min(2000)]))
        })?;
    let json = json.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    let r: serde_json::Value = serde_json::from_str(&json).map_err(|e| fail(format!("{e}: {json}")))?;

    let colours = r["colours"].as_object().ok_or_else(|| fail(format!("no colours: {r}")))?;
    let (pass, failed) = (colours.get("PASS"), colours.get("FAIL"));
    let transparent =
        |c: Option<&serde_json::Value>| c.and_then(|c| c.as_str()).is_none_or(|c| c == "rgba(0, 0, 0, 0)");
    if transparent(pass) || transparent(failed) || pass == failed {
        return Err(fail(format!("PASS and FAIL rows must have colours of their own: {colours:?}")));
    }
    let line = r["verdictLine"].as_str().unwrap_or("");
    if !(line.contains("FAIL 1") && line.contains("PASS 1")) {
        return Err(fail(format!("the summary names the counts: {line:?}")));
    }
    if r["shownBefore"] != "2 of 2 cases shown" || r["shownAfter"] != "1 of 2 cases shown" || r["visibleAgain"] != 2 {
        return Err(fail(format!("the PASS filter hides and shows its rows: {r}")));
    }
    if r["visibleWithoutPass"] != serde_json::json!(["FAIL"]) {
        return Err(fail(format!("with PASS unticked only the FAIL row shows: {r}")));
    }
    let links: Vec<&str> = r["evidence"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    if links.len() < 2 {
        return Err(fail(format!("DP-1's evidence links are in the page: {links:?}")));
    }
    for l in &links {
        if !out.join(l).is_file() {
            return Err(fail(format!("evidence link {l} does not resolve beside report.html")));
        }
    }

    // Kept after the test, beside the build's other test output.
    let shot = option_env!("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("report-html.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &[&format!("--screenshot={}", shot.display()), "--window-size=1400,900", "--hide-scrollbars"],
        &out.join("report.html"),
    )?;
    let png = std::fs::read(&shot).map_err(|e| fail(format!("no screenshot at {}: {e}", shot.display())))?;
    if !png.starts_with(b"\x89PNG") || png.len() < 10_000 {
        return Err(fail(format!("the screenshot is not a rendered page ({} bytes)", png.len())));
    }
    eprintln!("report.html rendered by {chromium}: colours {colours:?}; screenshot: {}", shot.display());
    Ok(Completion::Completed)
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = vec![Trial::ignorable_test("report.html in headless Chromium", report_in_a_browser)];
    libtest_mimic::run(&args, trials).exit_code()
}
