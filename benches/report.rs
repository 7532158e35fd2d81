//! Reads criterion's results back for the end-of-run summary tables (shared by the
//! benches through `#[path = "report.rs"] mod report;`).

use std::path::PathBuf;
use std::time::SystemTime;

/// Criterion's median time per iteration for `group`/`id`, in nanoseconds, with its 95%
/// confidence interval `(median, lower, upper)`, if the case was measured in this run
/// (its estimates file is newer than `started`). `groups` are this bench's group names,
/// used to find criterion's output directory.
pub fn median_ns(
    groups: &[&str],
    group: &str,
    id: &str,
    started: SystemTime,
) -> Option<(f64, f64, f64)> {
    let file = criterion_home(groups)?
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    if std::fs::metadata(&file).ok()?.modified().ok()? < started {
        return None;
    }
    let json = std::fs::read_to_string(&file).ok()?;
    let median = &json[json.find("\"median\"")?..];
    let number = |key: &str| -> Option<f64> {
        let at = median.find(key)? + key.len();
        let rest = median[at..].trim_start_matches([':', ' ']);
        let end = rest.find([',', '}'])?;
        rest[..end].trim().parse().ok()
    };
    Some((
        number("\"point_estimate\"")?,
        number("\"lower_bound\"")?,
        number("\"upper_bound\"")?,
    ))
}

/// Where criterion writes: `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`, or the
/// `criterion/` directory, holding one of `groups`, above this executable.
fn criterion_home(groups: &[&str]) -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|a| a.join("criterion"))
        .find(|c| groups.iter().any(|g| c.join(g).is_dir()))
}
