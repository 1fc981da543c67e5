//! `--distributed`: which group of processes a training run spreads over.

use std::rc::Rc;

use anyhow::Result;
use clap::ValueEnum;
use snn_train::Collective;

/// How `train` runs: alone, or data-parallel over MPI ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum DistributedArg {
    /// One process.
    #[default]
    Single,
    /// One rank of an MPI job (start it with `mpirun -np N snn-cli train --distributed mpi ...` or `srun`).
    Mpi,
    /// MPI when the process was started by an MPI launcher, else one process.
    Auto,
}

/// The collective of the run, `None` for one process.
pub(crate) fn connect(arg: DistributedArg) -> Result<Option<Rc<dyn Collective>>> {
    match arg {
        DistributedArg::Single => Ok(None),
        DistributedArg::Auto if !snn_train::collective::launched_by_mpi() => Ok(None),
        DistributedArg::Mpi | DistributedArg::Auto => mpi(),
    }
}

#[cfg(feature = "mpi")]
fn mpi() -> Result<Option<Rc<dyn Collective>>> {
    Ok(Some(Rc::new(snn_train::collective::Mpi::init()?)))
}

#[cfg(not(feature = "mpi"))]
fn mpi() -> Result<Option<Rc<dyn Collective>>> {
    anyhow::bail!(
        "this snn-cli was built without MPI: rebuild it with `cargo build --release -p snn-cli --features mpi` \
         (needs an MPI library and libclang, e.g. Debian's libopenmpi-dev, openmpi-bin and libclang-dev)"
    )
}
