//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, §3.4): the lookup table of
//! an external frontend, whose entry `hash(5-tuple) % M` is the backend of
//! a new flow. Every backend has its own permutation of the M entries, and
//! the backends take turns claiming their next preferred entry still free,
//! so each gets M/N entries (within one), and a change of backends moves
//! about 1/N of them.
//!
//! The table depends only on the backends' addresses and M: not on their
//! order, nor on the node-local backend ids, so every node computes the
//! same table and a flow that ECMP sends to any node finds the same
//! backend.

use std::net::SocketAddr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The largest table size: a prime below 2^24 (16 million entries of the
/// maglev map, 16 bytes each, for one frontend).
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

/// Table sizes are at least this many entries per backend, so that each
/// backend's share is within 1% of the others'.
pub const ENTRIES_PER_BACKEND: u64 = 100;

/// The default table size for `backends` backends: the smallest prime of
/// the ladder (the largest prime below each power of two from 2^7: 127,
/// 251, 509, 1021, ...) with at least `ENTRIES_PER_BACKEND` entries per
/// backend: 127 entries for a single backend, as the maglev map holds the
/// tables of every external frontend together. A fixed ladder rather than the smallest prime above 100 x N:
/// M changes only when the backends double, because a table of another
/// size moves nearly every flow, where one of the same size moves 1/N.
/// None when the backends need more than `MAX_TABLE_SIZE`.
pub fn default_table_size(backends: usize) -> Option<u32> {
    let needed = (backends as u64).max(1).saturating_mul(ENTRIES_PER_BACKEND);
    (7..=24).map(|bits| largest_prime_below(1 << bits)).find(|&prime| u64::from(prime) >= needed)
}

/// Whether `n` is prime (trial division: table sizes are below 2^24).
pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn largest_prime_below(n: u32) -> u32 {
    (2..n).rev().find(|&candidate| is_prime(candidate)).unwrap_or(2)
}

/// The table of `size` entries (a prime, at least the number of backends)
/// over `backends` (distinct addresses): entry i holds the index in
/// `backends` of its backend. Empty without backends.
pub fn table(backends: &[SocketAddr], size: u32) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    debug_assert!(is_prime(size) && size as usize >= backends.len());
    let m = u64::from(size);
    // Turns go in address order, so the table does not depend on the
    // order the backends come in.
    let mut order: Vec<u32> = (0..backends.len() as u32).collect();
    order.sort_by_key(|&i| backends[i as usize]);
    // Each backend's permutation: entry (offset + j * skip) % M for its
    // j-th preference. M is prime and 0 < skip < M, so it visits every
    // entry once.
    let mut next: Vec<(u64, u64, u64)> = order
        .iter()
        .map(|&i| {
            let key = address_key(backends[i as usize]);
            let offset = xxh3_64_with_seed(&key, 0) % m;
            let skip = xxh3_64_with_seed(&key, 1) % (m - 1) + 1;
            (offset, skip, 0)
        })
        .collect();
    let mut entries = vec![u32::MAX; size as usize];
    let mut filled = 0;
    'fill: loop {
        for (turn, &backend) in order.iter().enumerate() {
            let (offset, skip, tried) = &mut next[turn];
            let mut entry = ((*offset + *tried * *skip) % m) as usize;
            while entries[entry] != u32::MAX {
                *tried += 1;
                entry = ((*offset + *tried * *skip) % m) as usize;
            }
            *tried += 1;
            entries[entry] = backend;
            filled += 1;
            if filled == entries.len() {
                break 'fill;
            }
        }
    }
    entries
}

/// What a backend's permutation is hashed from: its address and port as
/// the datapath holds them (IPv4 as IPv4-mapped IPv6, network byte order),
/// the same on every node.
fn address_key(backend: SocketAddr) -> [u8; 18] {
    let ip = match backend {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
        SocketAddr::V6(v6) => *v6.ip(),
    };
    let mut key = [0; 18];
    key[..16].copy_from_slice(&ip.octets());
    key[16..].copy_from_slice(&backend.port().to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn backends(count: usize) -> Vec<SocketAddr> {
        (0..count)
            .map(|i| {
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + (i % 250) as u8)),
                    8080 + (i / 250) as u16,
                )
            })
            .collect()
    }

    /// Entries of `table` per backend address.
    fn shares(backends: &[SocketAddr], table: &[u32]) -> Vec<usize> {
        let mut shares = vec![0; backends.len()];
        for &entry in table {
            shares[entry as usize] += 1;
        }
        shares
    }

    #[test]
    fn default_sizes_are_primes_of_a_ladder_with_100_entries_a_backend() {
        assert_eq!(default_table_size(0), Some(127));
        assert_eq!(default_table_size(1), Some(127));
        assert_eq!(default_table_size(2), Some(251));
        assert_eq!(default_table_size(3), Some(509));
        assert_eq!(default_table_size(100), Some(16_381));
        assert_eq!(default_table_size(1_000), Some(131_071));
        assert_eq!(default_table_size(65_535), Some(8_388_593));
        assert_eq!(default_table_size(200_000), None);
        for n in [1, 7, 99, 1_000, 65_535] {
            let m = default_table_size(n).unwrap();
            assert!(is_prime(m) && u64::from(m) >= 100 * n as u64, "{n}: {m}");
        }
        assert!(is_prime(MAX_TABLE_SIZE) && !is_prime(1) && !is_prime(16_777_215));
    }

    /// Every backend gets M/N entries, +-1% of M/N (Maglev's fill gives
    /// each backend its turn, so they differ by at most one).
    #[test]
    fn every_backend_gets_its_share() {
        for n in [1, 2, 3, 10, 57, 100, 500] {
            let backends = backends(n);
            let m = default_table_size(n).unwrap();
            let table = table(&backends, m);
            assert_eq!(table.len(), m as usize);
            let fair = f64::from(m) / n as f64;
            for (i, share) in shares(&backends, &table).into_iter().enumerate() {
                assert!(
                    (share as f64 - fair).abs() <= (fair * 0.01).max(1.0),
                    "{n} backends: {i} has {share}, fair {fair}"
                );
            }
        }
    }

    /// Adding a backend to N moves at most 1/(N+1) + 10% of the entries
    /// (the table size staying the same).
    #[test]
    fn a_change_of_backends_moves_few_entries() {
        for n in [1, 2, 5, 10, 50, 99] {
            let before = backends(n);
            let after = backends(n + 1);
            let m = default_table_size(n + 1).unwrap();
            let (old, new) = (table(&before, m), table(&after, m));
            // Indices of the first n backends are the same in both lists.
            let moved = old.iter().zip(&new).filter(|(a, b)| a != b).count();
            let bound = 1.0 / (n + 1) as f64 + 0.10;
            assert!((moved as f64 / f64::from(m)) <= bound, "{n} -> {}: {moved} of {m} moved", n + 1);
        }
    }

    /// The same backends in any order give the same table (by address).
    #[test]
    fn the_table_depends_on_addresses_only() {
        let mut backends = backends(17);
        backends.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)), 80));
        let m = default_table_size(backends.len()).unwrap();
        let by_address = |backends: &[SocketAddr]| -> Vec<SocketAddr> {
            table(backends, m).into_iter().map(|i| backends[i as usize]).collect()
        };
        let first = by_address(&backends);
        backends.reverse();
        assert_eq!(by_address(&backends), first);
        backends.swap(3, 11);
        assert_eq!(by_address(&backends), first);
        // And it is not a trivial table: every backend has entries.
        assert!(shares(&backends, &table(&backends, m)).iter().all(|&s| s > 0));
        assert!(table(&[], 251).is_empty());
    }
}
