//! Shard partitioning of a run's plan: which images this pod keeps, and how the images
//! spread over the shards (for `--check`). The owner of each image is decided by
//! [`crate::input::shard::owner`], a fixed hash kept beside the `Shard` type.

use crate::input::plan::Plan;
use crate::input::shard::{Shard, owner};

/// Keeps only the jobs `shard` owns; each keeps its config index, so the report stays in
/// config order.
pub fn restrict(plan: &mut Plan, shard: Shard) {
    plan.jobs.retain(|job| shard.owns(job));
}

/// How the plan's images spread over `count` shards: images per shard.
pub fn partition(plan: &Plan, count: u32) -> Vec<usize> {
    let mut sizes = vec![0; count.max(1) as usize];
    for job in &plan.jobs {
        sizes[owner(job, count) as usize] += 1;
    }
    sizes
}

/// The partition for `--check`: images per shard, the balance (largest shard over the
/// mean), and each image's shard.
pub fn describe_partition(plan: &Plan, count: u32) -> String {
    let sizes = partition(plan, count);
    let total: usize = sizes.iter().sum();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let smallest = sizes.iter().copied().min().unwrap_or(0);
    let mean = total as f64 / f64::from(count.max(1));
    let balance = if total == 0 {
        1.0
    } else {
        largest as f64 / mean
    };
    let per_shard: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(index, size)| format!("{index}: {size}"))
        .collect();
    let mut text = format!(
        "shards: {total} image(s) over {count} shard(s): {}; smallest {smallest}, largest {largest}, balance {balance:.2} (largest / mean; 1.00 is even)",
        per_shard.join(", ")
    );
    if !plan.selections.is_empty() {
        text.push_str(&format!(
            "\n  (not counted: the tags of {} tag-rule entr{}, listed at run time; each selected tag is placed the same way)",
            plan.selections.len(),
            if plan.selections.len() == 1 { "y" } else { "ies" }
        ));
    }
    for job in &plan.jobs {
        text.push_str(&format!(
            "\n  shard {} <- [{}] {}",
            owner(job, count),
            job.index,
            job.source.with_tag(&job.tag)
        ));
    }
    text
}
