//! `strait-lab demo`: one gRPC client, one connection, a Deployment scaled
//! from 3 to 5, without and with the mesh.

use crate::client::LabClient;
use crate::paths::LabPaths;

pub async fn run(_paths: &LabPaths, _client: &LabClient) -> anyhow::Result<()> {
    anyhow::bail!("the demo needs the balancing proxy, which is not built yet")
}
