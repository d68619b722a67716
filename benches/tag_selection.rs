//! Tag selection's time at 100,000 listed tags (issue 18 item 6): `cargo bench --bench
//! tag_selection` prints the best of five runs per rule set; the count of comparisons is
//! asserted by the unit test `selection_from_100000_tags_makes_n_log_n_comparisons`.

use std::time::{Duration, Instant};

use image_sync::input::config::RawTags;
use image_sync::input::tag_rules::{resolve, select};

fn main() {
    let n = 100_000_u64;
    let named: Vec<String> = (0..n)
        .map(|i| format!("build-{}-{}", (i * 7_919) % n, i % 13))
        .collect();
    let versions: Vec<String> = (0..n)
        .map(|i| format!("v{}.{}.{}", i / 10_000, (i / 100) % 100, i % 100))
        .collect();
    let cases = [
        (
            "regex with captures",
            "regex: 'build-(\\d+)-(\\d+)'\n",
            &named,
        ),
        (
            "regex, latest 10",
            "regex: 'build-.*'\nlatest: 10\n",
            &named,
        ),
        ("semver, all", "semver: '>=0.0.0'\n", &versions),
        (
            "semver, latest 3",
            "semver: '>=1.0.0'\nlatest: 3\n",
            &versions,
        ),
    ];
    for (name, yaml, listed) in cases {
        let raw: RawTags = serde_yaml_ng::from_str(yaml).expect("rules");
        let rules = resolve(&raw).expect("valid rules");
        let mut best = Duration::MAX;
        let mut picked = 0;
        for _ in 0..5 {
            let started = Instant::now();
            picked = select(&rules, listed).len();
            best = best.min(started.elapsed());
        }
        println!(
            "tag selection, {n} tags, {name}: {picked} selected in {:.1} ms (best of 5)",
            best.as_secs_f64() * 1e3
        );
    }
}
