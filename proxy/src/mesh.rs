//! Reading and writing the mesh header (see `strait_contract::mesh`) on a
//! connection between proxies.

use std::io;

use strait_contract::mesh::{self, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes the header for a connection to `port`.
pub async fn write_header<S: AsyncWrite + Unpin>(stream: &mut S, port: u16) -> io::Result<()> {
    stream.write_all(&mesh::header(port)).await
}

/// Reads the header: the application port the connection is for.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<u16> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await?;
    mesh::parse_header(header).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
