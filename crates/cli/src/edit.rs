//! TODO: being written.
#[derive(clap::Args)]
pub struct EditArgs {}

pub fn run(_a: EditArgs) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
