//! Parsing the items of split files on every core the process may use.
//!
//! Items are independent (each is read alone from its own bytes), and
//! parsing is most of a full sync's time (bench/RESULTS.md, "YAML
//! parser"), so it is spread over threads; what follows (translation, the
//! plan, the map writes) stays on one. balctl's allocator (mimalloc, in
//! src/bin/balctl.rs) keeps a big sync's peak memory what it is on one
//! thread. The result is the one a loop over
//! the items gives: the same values in the same order, and on failure the
//! error of the first item that fails.

use std::{
    num::NonZeroUsize,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
};

use anyhow::Result;

/// Items a thread takes at a time: enough that taking costs nothing next
/// to parsing them, few enough that threads end close together.
const CHUNK: usize = 64;

/// `parse` applied to every item, its results concatenated in item order.
///
/// Threads are only started for more than one chunk, and never more than
/// `std::thread::available_parallelism` (which honours a cgroup's CPU
/// quota: an agent limited to one CPU parses on one thread).
pub fn flat_map<T: Sync, R: Send>(
    items: &[T],
    parse: impl Fn(&T) -> Result<Vec<R>> + Sync,
) -> Result<Vec<R>> {
    let threads =
        thread::available_parallelism().map_or(1, NonZeroUsize::get).min(items.len().div_ceil(CHUNK));
    if threads <= 1 {
        return sequential(items, &parse);
    }
    let next_chunk = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // Each thread's chunks, by chunk index, each chunk's results or the
    // error that ended it.
    let done: Vec<Vec<(usize, Result<Vec<R>>)>> = thread::scope(|scope| {
        let work = || {
            let mut chunks = Vec::new();
            // Chunks are taken in order and a taken chunk is parsed up to
            // its first failure, so every item before the first failing
            // one is parsed, whichever thread fails first.
            while !failed.load(Ordering::Relaxed) {
                let chunk = next_chunk.fetch_add(1, Ordering::Relaxed);
                let start = chunk * CHUNK;
                if start >= items.len() {
                    break;
                }
                let result = sequential(&items[start..items.len().min(start + CHUNK)], &parse);
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                chunks.push((chunk, result));
            }
            chunks
        };
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut done = vec![work()];
        // A panic in a helper is a bug; it is raised again here.
        done.extend(
            helpers.into_iter().map(|helper| helper.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
        );
        done
    });
    let mut chunks: Vec<(usize, Result<Vec<R>>)> = done.into_iter().flatten().collect();
    chunks.sort_unstable_by_key(|&(chunk, _)| chunk);
    let chunks = chunks.into_iter().map(|(_, chunk)| chunk).collect::<Result<Vec<Vec<R>>>>()?;
    // Reserved exactly: at 100,000 Services the results are megabytes, and
    // growing by doubling would hold up to twice that at the peak.
    let mut results = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for chunk in chunks {
        results.extend(chunk);
    }
    Ok(results)
}

fn sequential<T, R>(items: &[T], parse: &impl Fn(&T) -> Result<Vec<R>>) -> Result<Vec<R>> {
    let mut results = Vec::new();
    for item in items {
        results.extend(parse(item)?);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use anyhow::bail;

    use super::*;

    #[test]
    fn results_come_in_item_order_as_a_loop_gives_them() {
        let items: Vec<usize> = (0..10 * CHUNK + 7).collect();
        let results = flat_map(&items, |&i| Ok(vec![i; i % 3])).unwrap();
        let expected: Vec<usize> = items.iter().flat_map(|&i| vec![i; i % 3]).collect();
        assert_eq!(results, expected);
        assert!(flat_map(&[] as &[usize], |&i| Ok(vec![i])).unwrap().is_empty());
    }

    #[test]
    fn the_first_failing_item_gives_the_error() {
        let items: Vec<usize> = (0..20 * CHUNK).collect();
        let failing = [5 * CHUNK + 3, 5 * CHUNK + 9, 7 * CHUNK, 19 * CHUNK];
        for _ in 0..20 {
            let err = flat_map(&items, |&i| {
                if failing.contains(&i) {
                    bail!("item {i}");
                }
                Ok(vec![i])
            })
            .unwrap_err();
            assert_eq!(err.to_string(), format!("item {}", 5 * CHUNK + 3));
        }
    }
}
