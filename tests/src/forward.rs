//! A TCP forwarder on 127.0.0.1: stands in for a tenant's own database host
//! (flows may never reach the platform's database address, but a customer's
//! server elsewhere is fine), or for the platform's database in outage
//! tests. Dropping it stops accepting and cuts every connection it carries.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Forward {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn forward(target: SocketAddr) -> Forward {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    forward_from(listener, target)
}

/// Forwards what `listener` accepts (e.g. a port reopened after an outage).
pub fn forward_from(listener: TcpListener, target: SocketAddr) -> Forward {
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        // Dropped with this task when the forwarder is: every connection ends.
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Forward { port, task }
}

/// A forwarder whose target can be switched, as a fail-over's virtual
/// address (CloudNativePG's `-rw` service, a proxy): [`Switch::retarget`]
/// cuts every connection it carries, and new ones go to the new target.
pub struct Switch {
    pub port: u16,
    target: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
    cut: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn switch(target: SocketAddr) -> Switch {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let target = std::sync::Arc::new(std::sync::Mutex::new(target));
    let (cut, _) = tokio::sync::watch::channel(0u64);
    let task = {
        let (target, cut) = (target.clone(), cut.clone());
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *target.lock().expect("target lock");
                let mut cut = cut.subscribe();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        })
    };
    Switch {
        port,
        target,
        cut,
        task,
    }
}

impl Switch {
    /// Sends new connections to `to` and ends every current one.
    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().expect("target lock") = to;
        self.cut.send_modify(|n| *n += 1);
    }
}
