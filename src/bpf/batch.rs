//! Reading a whole map a batch of entries per bpf() call
//! (BPF_MAP_LOOKUP_BATCH, Linux 5.6; aya 0.14 walks a map with one call per
//! key and one per value). `status`, the agent's map fill and the drift
//! check of `status` and `load` read every map this way: a map of 65,536
//! entries takes a few dozen calls instead of 65,536 to 131,072. And
//! writing many entries of a hash map per call (BPF_MAP_UPDATE_BATCH,
//! BPF_MAP_DELETE_BATCH), as a plan's runs of like writes do: a full sync
//! of 100,000 services is 3.1 million writes.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{MapData, MapInfo, MapType};

use super::sys;

/// Bytes of keys and values one call copies, about: enough that the calls
/// cost nothing beside the copying, small enough to stay in the cache.
const BATCH_BYTES: usize = 256 * 1024;

/// Calls `each` with every entry's key and value, as the kernel lays them
/// out (see `value_stride`). Entries added or removed during the walk may be seen or not, as
/// with a walk key by key.
pub fn for_each(map: &MapData, mut each: impl FnMut(&[u8], &[u8])) -> Result<()> {
    let info = map.info().context("cannot inspect a map")?;
    let (key_size, value_stride) = (info.key_size() as usize, value_stride(&info)?);
    let max_entries = (info.max_entries() as usize).max(1);
    let mut count = (BATCH_BYTES / (key_size + value_stride)).clamp(1, max_entries);
    let (mut keys, mut values) = (vec![0; count * key_size], vec![0; count * value_stride]);
    // The position between calls: a bucket (hash maps, 4 bytes) or the
    // last key read (arrays).
    let position = key_size.max(4);
    let (mut in_batch, mut out_batch) = (vec![0; position], vec![0; position]);
    let mut started = false;
    loop {
        // SAFETY: the sizes are the kernel's own for this map, and both
        // positions hold the key size and 4 bytes.
        let batch = unsafe {
            sys::map_lookup_batch(
                map.fd().as_fd(),
                (key_size, value_stride),
                started.then_some(in_batch.as_slice()),
                &mut out_batch,
                &mut keys,
                &mut values,
            )
        };
        let batch = match batch {
            Ok(batch) => batch,
            // A hash bucket holds more entries than a batch has room for.
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) && count < max_entries => {
                count = (count * 2).min(max_entries);
                keys.resize(count * key_size, 0);
                values.resize(count * value_stride, 0);
                continue;
            }
            Err(err) => bail!("cannot read map id {}: {err}", info.id()),
        };
        for i in 0..batch.count {
            each(&keys[i * key_size..][..key_size], &values[i * value_stride..][..value_stride]);
        }
        if !batch.more {
            return Ok(());
        }
        std::mem::swap(&mut in_batch, &mut out_batch);
        started = true;
    }
}

/// Bytes the kernel copies per value: a per-CPU value is one slot per
/// possible CPU, each rounded up to 8 bytes.
fn value_stride(info: &MapInfo) -> Result<usize> {
    let value_size = info.value_size() as usize;
    Ok(match info.map_type() {
        Ok(MapType::PerCpuHash | MapType::LruPerCpuHash | MapType::PerCpuArray) => {
            let cpus = aya::util::nr_cpus().map_err(|(file, err)| anyhow!("cannot read {file}: {err}"))?;
            value_size.next_multiple_of(8) * cpus
        }
        _ => value_size,
    })
}

/// The entries a map holds.
pub fn count(map: &MapData) -> Result<usize> {
    let mut entries = 0;
    for_each(map, |_, _| entries += 1)?;
    Ok(entries)
}

/// Every entry of a map whose keys are `K` and values `V` (not per-CPU).
pub fn for_each_typed<K: aya::Pod, V: aya::Pod>(map: &MapData, mut each: impl FnMut(K, V)) -> Result<()> {
    let info = map.info().context("cannot inspect a map")?;
    if (info.key_size() as usize, value_stride(&info)?) != (size_of::<K>(), size_of::<V>()) {
        bail!("map id {} does not have the layout this balctl expects", info.id());
    }
    for_each(map, |key, value| each(pod(key), pod(value)))
}

fn pod<T: aya::Pod>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), size_of::<T>());
    // SAFETY: `T` is plain data (aya::Pod): any bytes of its size are a
    // value of it; the read does not need alignment.
    unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
}

/// Puts `entries` into `map` in order, as many per call as fit in
/// `BATCH_BYTES`. If one fails: how many were written before it (all of
/// them, in order), and why.
pub fn put<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    entries: &[(K, V)],
) -> Result<(), (usize, std::io::Error)> {
    let per_call = (BATCH_BYTES / (size_of::<K>() + size_of::<V>())).max(1);
    let mut written = 0;
    for chunk in entries.chunks(per_call) {
        let keys: Vec<u8> = chunk.iter().flat_map(|(key, _)| bytes(key)).copied().collect();
        let values: Vec<u8> = chunk.iter().flat_map(|(_, value)| bytes(value)).copied().collect();
        // SAFETY: `keys` and `values` hold the chunk's keys and values, of
        // the map's sizes (its typed handle checked them when it opened it).
        let (done, result) =
            unsafe { sys::map_write_batch(map.fd().as_fd(), &keys, Some(&values), chunk.len()) };
        written += done;
        result.map_err(|err| (written, err))?;
    }
    Ok(())
}

/// Deletes `keys` from `map` in order, as many per call as fit in
/// `BATCH_BYTES`; a key that is not there is deleted already. If one
/// fails otherwise: how many were deleted before it, and why.
pub fn delete<K: aya::Pod>(map: &MapData, keys: &[K]) -> Result<(), (usize, std::io::Error)> {
    let per_call = (BATCH_BYTES / size_of::<K>()).max(1);
    let mut done = 0;
    while done < keys.len() {
        let chunk = &keys[done..keys.len().min(done + per_call)];
        let raw: Vec<u8> = chunk.iter().flat_map(|key| bytes(key)).copied().collect();
        // SAFETY: `raw` holds the chunk's keys, of the map's key size.
        let (deleted, result) = unsafe { sys::map_write_batch(map.fd().as_fd(), &raw, None, chunk.len()) };
        done += deleted;
        match result {
            Ok(()) => {}
            // The kernel stops at a key that is not there: it is done, go on after it.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) && deleted < chunk.len() => done += 1,
            Err(err) => return Err((done, err)),
        }
    }
    Ok(())
}

fn bytes<T: aya::Pod>(value: &T) -> &[u8] {
    // SAFETY: `T` is plain data (aya::Pod) without padding the kernel
    // would mind: its bytes are its layout in the map.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}
