//! ZooKeeper `zoo.cfg` for each node of a datacenter's ensemble.

use std::fmt::Write;

use crate::topology::Datacenter;

/// Ensemble peer port base: peers talk on `client port + 1000` (quorum) and
/// `+ 2000` (election), the convention of the ZooKeeper docs shifted to sit
/// beside the client port.
pub const PEER_PORT_OFFSET: u16 = 1000;

/// Folder name of node `i` (0-based) of `dc`, e.g. `dc1-zk1`.
pub fn node_name(dc: &Datacenter, i: usize) -> String {
    format!("{}-zk{}", dc.name, i + 1)
}

/// `zoo.cfg` of node `i` of `dc`. A single node runs standalone; several
/// form an ensemble (each also needs `myid` = i + 1 in its data directory).
pub fn zoo_cfg(dc: &Datacenter, i: usize) -> String {
    let node = &dc.zookeeper[i];
    let mut s = format!(
        "# Rendered by spoolhouse: ZooKeeper {} of datacenter {}.\n\
         tickTime=2000\n\
         initLimit=10\n\
         syncLimit=5\n\
         dataDir={}\n\
         clientPort={}\n\
         clientPortAddress={}\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=ruok,srvr,stat,mntr\n\
         autopurge.snapRetainCount=3\n\
         autopurge.purgeInterval=1\n",
        i + 1,
        dc.name,
        node.data_path.display(),
        node.port,
        node.host,
    );
    if dc.zookeeper.len() > 1 {
        for (j, peer) in dc.zookeeper.iter().enumerate() {
            let _ = writeln!(
                s,
                "server.{}={}:{}:{}",
                j + 1,
                peer.host,
                peer.port.saturating_add(PEER_PORT_OFFSET),
                peer.port.saturating_add(2 * PEER_PORT_OFFSET)
            );
        }
    }
    s
}
