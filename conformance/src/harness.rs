//! `cargo test -p opof-conformance`: every case as its own test (libtest-mimic), against the
//! target in the environment (see [`TargetConfig::from_env`]). PASS and NON-STRICT pass (a
//! NON-STRICT prints what it tolerated), FAIL and ERROR fail, SKIP shows as ignored with its
//! reason. Cases run one at a time whatever `--test-threads` says: they share the target.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::cases;
use crate::ctx::RunState;
use crate::runner::run_case;
use crate::target::{Target, TargetConfig};
use crate::verdict::Verdict;

struct Shared {
    rt: tokio::runtime::Runtime,
    run: Mutex<Option<Result<Arc<RunState>, String>>>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| Shared {
        rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime"),
        run: Mutex::new(None),
    })
}

/// The target, started on first use (so that `--list` starts nothing).
fn target() -> Result<Arc<RunState>, String> {
    let s = shared();
    let mut slot = s.run.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        let started = TargetConfig::from_env()
            .map(|mut c| {
                // The DP cases' captures go somewhere even when no folder is named.
                c.evidence_dir.get_or_insert_with(|| std::env::temp_dir().join("opof-conformance-evidence"));
                c
            })
            .map_err(|e| format!("target configuration: {e}"))
            .and_then(|c| s.rt.block_on(Target::start(c)).map_err(|e| format!("target: {e}")))
            .map(RunState::new);
        if let Ok(r) = &started {
            eprintln!("conformance target: {}", serde_json::to_string(&r.target.info).unwrap_or_default());
        }
        *slot = Some(started);
    }
    slot.clone().expect("set above")
}

/// The test binary's `main`.
pub fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials = cases::all()
        .into_iter()
        .map(|case| {
            let name = format!("{} {}", case.id, case.title);
            let kind = case.clause;
            Trial::ignorable_test(name, move || {
                // A target that cannot be reached is one ERROR, in CONN-1.1 (the case that asks
                // whether it answers); the other cases are not run.
                let run = match target() {
                    Ok(run) => run,
                    Err(e) if case.id == "CONN-1.1" => return Err(Failed::from(format!("ERROR: {e}"))),
                    Err(_) => {
                        return Ok(Completion::ignored_with("not run: the target cannot be reached (see CONN-1.1)"))
                    }
                };
                let r = shared().rt.block_on(run_case(&run, &case));
                for n in &r.notes {
                    println!("note: {n}");
                }
                if let Some(first) = r.evidence.first() {
                    let dir = std::path::Path::new(first).parent().unwrap_or(std::path::Path::new("."));
                    println!("evidence: {} ({} pcapng, one per port)", dir.display(), r.evidence.len());
                }
                match r.verdict {
                    Verdict::Pass => Ok(Completion::Completed),
                    Verdict::NonStrict => {
                        for t in &r.tolerated {
                            println!("NON-STRICT ({}): {}", t.profile, t.what);
                        }
                        Ok(Completion::Completed)
                    }
                    Verdict::Skip => Ok(Completion::ignored_with(r.details)),
                    Verdict::Fail => Err(Failed::from(format!("FAIL ({}): {}", r.clause, r.details))),
                    Verdict::Error => Err(Failed::from(format!("ERROR: {}", r.details))),
                }
            })
            .with_kind(kind)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop the target (an embedded server, or a container) inside the runtime.
    if let Some(s) = SHARED.get() {
        let run = s.run.lock().unwrap_or_else(|e| e.into_inner()).take();
        s.rt.block_on(async move { drop(run) });
    }
    conclusion.exit_code()
}
