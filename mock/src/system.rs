//! System programs that some tests start (`redis-server`, headless Chromium): found, or the
//! test is skipped with one line saying what to install, unless the run requires them.

use std::io::Write;
use std::process::{Command, Stdio};

/// The environment variable that turns a missing program from a skip into a failure.
///
/// `.ci/run` sets it (after installing the programs), so CI can never pass by skipping.
pub const REQUIRE_PROGRAMS: &str = "TOWER_SSE_REQUIRE_PROGRAMS";

/// The first of `names` that runs here (`NAME --version` succeeds).
///
/// When none does, prints `skipped: TEST needs NAME (apt-get install -y PACKAGE)` on stderr
/// (also when the test harness captures output) and returns `None`, so the test returns early; with [`REQUIRE_PROGRAMS`] set to anything
/// but empty or `0`, panics with the same words instead.
pub fn program_or_skip<'a>(names: &[&'a str], package: &str) -> Option<&'a str> {
    let found = names.iter().copied().find(|name| {
        Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if found.is_none() {
        let wanted = names.first().copied().unwrap_or(package);
        // The test harness names each test's thread after the test.
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("this test");
        let line = format!("{test} needs {wanted} (apt-get install -y {package})");
        if std::env::var_os(REQUIRE_PROGRAMS).is_some_and(|v| !v.is_empty() && v != "0") {
            panic!("{line}, and {REQUIRE_PROGRAMS} is set");
        }
        // Written to the process's stderr, past the test harness's capture of `eprintln!`, so
        // that the skip shows in a passing run.
        let _ = writeln!(std::io::stderr(), "skipped: {line}");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_runs_is_found() {
        // `cargo` runs wherever these tests do.
        assert_eq!(
            program_or_skip(&["no-such-program-here", "cargo"], "cargo"),
            Some("cargo")
        );
    }

    #[test]
    fn a_missing_program_skips_unless_required() {
        if std::env::var_os(REQUIRE_PROGRAMS).is_some() {
            return; // the required case panics by design
        }
        assert_eq!(program_or_skip(&["no-such-program-here"], "none"), None);
    }
}
