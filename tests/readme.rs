//! What the README tells a new user agrees with the code: how to get `kivihook` on the PATH
//! (its commands are shown as `kivihook …`), and what `retry_schedule` values mean.

use kivihook_core::retry::{RetrySchedule, DEFAULT_SCHEDULE};

const README: &str = include_str!("../README.md");

#[test]
fn the_readme_says_how_to_put_kivihook_on_the_path() {
    assert!(README.contains("kivihook webhooks apply"));
    assert!(
        README.contains("cargo install --path ."),
        "the README shows `kivihook …` commands without saying how to install the binary"
    );
}

/// The configuration table's row of one setting.
fn setting_row(key: &str) -> &'static str {
    README
        .lines()
        .find(|l| l.starts_with(&format!("| `{key}` |")))
        .unwrap_or_else(|| panic!("no row for `{key}` in the README's configuration table"))
}

#[test]
fn the_readme_describes_retry_schedule_as_waits_between_attempts() {
    // The code: entry i is the wait after attempt i + 1 fails, counted from that attempt.
    let s = RetrySchedule::parse("1,2,4").unwrap();
    assert_eq!(s.max_attempts(), 4);
    assert_eq!(s.delay_after(3).map(|d| d.as_secs_f64().round()), Some(4.0));

    let row = setting_row("retry_schedule");
    assert!(
        !README.contains("after the first attempt"),
        "the values are waits between attempts, not times after the first: {row}"
    );
    assert!(row.contains("after each failed attempt"), "{row}");
    let default = DEFAULT_SCHEDULE
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        row.ends_with(&format!("| `{default}` |")),
        "the default shown is the code's ({default}): {row}"
    );
}
