//! Which slot serves a user: `jump_consistent_hash(stable_hash64(user), n)`.
//!
//! Both functions are frozen: changing either moves users between workers
//! (and later, their live state), so the tests pin their outputs.

use warren_protocol::UserId;

/// A 64-bit hash of a user id that is the same in every build and release:
/// XXH3-64 with its default seed over the id's 16 bytes.
pub fn stable_hash64(user: &UserId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user.as_bytes())
}

/// Lamping & Veach's jump consistent hash: maps `key` to one of `buckets`
/// buckets, evenly, moving only ~1/(n+1) of keys when `buckets` grows by one.
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    assert!(buckets > 0, "a pool has at least one slot");
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as u32
}

/// The slot that serves `user` in a pool of `slots` workers.
pub fn slot_for(user: &UserId, slots: u32) -> u32 {
    jump_consistent_hash(stable_hash64(user), slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u128) -> UserId {
        UserId(n.to_be_bytes())
    }

    #[test]
    fn the_hash_is_pinned() {
        // XXH3-64 of the empty input, from the algorithm's specification:
        // proves the crate computes XXH3 and not some look-alike.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        // Recorded from this implementation. If these change, every deployed
        // user moves to another worker.
        let cases = [
            (0u128, 0xd0a6_6a65_c752_8968u64),
            (1, 0x4152_418f_75dd_93bb),
        ];
        for (n, expected) in cases {
            assert_eq!(stable_hash64(&user(n)), expected, "user {n}");
        }
    }

    #[test]
    fn jump_hash_matches_the_published_vectors() {
        // The reference values every jump-hash implementation checks against.
        let golden_100 = [
            0, 55, 62, 8, 45, 59, 86, 97, 82, 59, 73, 37, 17, 56, 86, 21, 90, 37, 38, 83,
        ];
        for (key, expected) in golden_100.into_iter().enumerate() {
            assert_eq!(jump_consistent_hash(key as u64, 100), expected, "key {key}");
        }
        let cases = [
            (10_863_919_174_838_991u64, 11u32, 6u32),
            (2_016_238_256_797_177_309, 11, 3),
            (1_673_758_223_894_951_030, 11, 5),
            (2, 100_001, 80_343),
            (2201, 100_001, 22_152),
            (2202, 100_001, 15_018),
        ];
        for (key, buckets, expected) in cases {
            assert_eq!(
                jump_consistent_hash(key, buckets),
                expected,
                "key {key} in {buckets}"
            );
        }
    }

    #[test]
    fn growing_the_pool_moves_users_only_to_the_new_slot() {
        let mut moved = 0;
        for n in 0..10_000u128 {
            let before = slot_for(&user(n), 4);
            let after = slot_for(&user(n), 5);
            if before != after {
                assert_eq!(after, 4, "user {n} moved between old slots");
                moved += 1;
            }
        }
        // About 1/5 of users move; allow for chance.
        assert!((1_600..=2_400).contains(&moved), "{moved} moved");
    }

    #[test]
    fn users_spread_evenly() {
        for slots in [2u32, 3, 4, 7, 16] {
            let mut counts = vec![0u32; slots as usize];
            for n in 0..10_000u128 {
                counts[slot_for(&user(n * 7919 + 13), slots) as usize] += 1;
            }
            let mean = 10_000.0 / f64::from(slots);
            let busiest = f64::from(*counts.iter().max().unwrap());
            assert!(busiest / mean <= 1.15, "{slots} slots: {counts:?}");
        }
    }
}
