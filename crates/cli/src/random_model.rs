//! TODO(helper): being written.
#[derive(clap::Args)]
pub struct RandomModelArgs {}

pub fn run(_a: RandomModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
