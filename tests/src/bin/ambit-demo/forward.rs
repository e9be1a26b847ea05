//! The controller's admin port (the mesh page, `ambitctl`) brought to this machine's
//! loopback: the test bed's namespaces have no route to or from the host, so each
//! connection to the local port is carried to the port inside the fabric namespace.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
};

use anyhow::Result;

/// Listens on 127.0.0.1:`port` (or any free port if it is taken); returns the address.
pub fn start(netns: PathBuf, port: u16, target: SocketAddr) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind(("127.0.0.1", port)).or_else(|_| TcpListener::bind(("127.0.0.1", 0)))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let netns = netns.clone();
            std::thread::spawn(move || {
                let Ok(Ok(server)) =
                    mesh_tests::sys::in_netns(&netns, || TcpStream::connect(target))
                else {
                    return;
                };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    return;
                };
                let up = std::thread::spawn(move || pipe(client_copy, server_copy));
                pipe(server, client);
                let _ = up.join();
            });
        }
    });
    Ok(addr)
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
