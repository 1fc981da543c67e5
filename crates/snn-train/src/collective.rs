//! Collective communication for data-parallel training: every rank holds the same weights, trains on its
//! shard of each global batch, and the ranks sum their gradients before the same update.
//!
//! [`Single`] is the one-process default; [`Mpi`] (feature `mpi`) runs over the system's MPI library, one
//! process per rank, started by `mpirun`, `mpiexec` or Slurm's `srun`.

use std::fmt::Debug;

use crate::{Error, Result};

/// The operations data-parallel training needs from a group of processes (ranks `0..size`).
pub trait Collective: Debug {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replaces `values` on every rank by the element-wise sum over all ranks.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()>;
    /// Replaces `bytes` on every rank by rank `root`'s bytes (the lengths may differ before the call).
    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank of the job at once with `code` (a rank that failed alone must not leave the others
    /// waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// One process: the sums are the values themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut Vec<u8>, _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Whether this process was started by an MPI launcher (Open MPI's `mpirun`, MPICH/Hydra's `mpiexec`, PMIx,
/// or Slurm's `srun` with an MPI plugin): what `--distributed auto` looks at.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"].iter().any(|v| std::env::var_os(v).is_some())
}

#[cfg(feature = "mpi")]
pub use self::mpi_backend::Mpi;

#[cfg(feature = "mpi")]
mod mpi_backend {
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::topology::{Communicator, SimpleCommunicator};

    use super::Collective;
    use crate::{Error, Result};

    /// The ranks of `MPI_COMM_WORLD`. MPI is initialised when this is made and finalised when it is dropped;
    /// one per process.
    pub struct Mpi {
        world: SimpleCommunicator,
        // Dropped last: finalises MPI.
        _universe: mpi::environment::Universe,
    }

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank(), self.size())
        }
    }

    impl Mpi {
        /// Initialises MPI; fails when it was initialised before in this process.
        pub fn init() -> Result<Self> {
            let universe = mpi::initialize().ok_or_else(|| Error::Config("MPI was already initialised".into()))?;
            Ok(Self { world: universe.world(), _universe: universe })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
            let send = values.to_vec();
            self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }
        fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
            let root = self.world.process_at_rank(root as i32);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            bytes.resize(len as usize, 0);
            root.broadcast_into(&mut bytes[..]);
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            self.world.barrier();
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

/// The part of `0..n` that rank `rank` of `size` takes: contiguous, sizes differing by at most one, lower
/// ranks first.
pub fn shard(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Checks that a collective's rank and size make sense.
pub(crate) fn check(c: &dyn Collective) -> Result<()> {
    if c.size() == 0 || c.rank() >= c.size() {
        return Err(Error::Config(format!("rank {} of {} is not a valid rank", c.rank(), c.size())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_index_once_in_order() {
        for n in [0, 1, 5, 16, 17] {
            for size in 1..6 {
                let all: Vec<usize> = (0..size).flat_map(|r| shard(n, r, size)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
                let lens: Vec<usize> = (0..size).map(|r| shard(n, r, size).len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
