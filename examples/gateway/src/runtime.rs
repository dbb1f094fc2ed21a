//! How the gateway runs on the CPU: one multi-thread runtime, or one current-thread runtime
//! per core with its own `SO_REUSEPORT` listener; and the in-process mock upstream.

use std::net::SocketAddr;

use example_gateway::{GatewayConfig, Shared};
use tokio::net::{TcpListener, TcpSocket};

/// Connections waiting to be accepted, per listener (the kernel caps it at somaxconn).
const BACKLOG: u32 = 4096;

/// One multi-thread runtime serving one listener (`SO_REUSEPORT` with `share_port`).
pub(crate) fn run_multi(
    listen: SocketAddr,
    share_port: bool,
    config: GatewayConfig,
) -> std::io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let grace = config.shutdown_grace;
            let listener = bind(listen, share_port)?.listen(BACKLOG)?;
            let gateway = example_gateway::start(listener, config, None).await?;
            eprintln!("runtime: multi (one multi-thread runtime)");
            announce(gateway.addr, gateway.metrics_addr);
            let signal = stop_signal().await?;
            shut_down(
                signal,
                grace,
                gateway.open_streams.get(),
                gateway.shutdown(grace),
            )
            .await;
            Ok(())
        })
}

/// One current-thread runtime per core, each accepting on its own `SO_REUSEPORT` listener
/// bound to the same address (the kernel spreads connections over them), all sharing one
/// registry, stream limit and metrics recorder.
pub(crate) fn run_per_core(
    listen: SocketAddr,
    share_port: bool,
    config: GatewayConfig,
) -> std::io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sockets = bind_reuseport_group(listen, cores, share_port)?;
    let addr = sockets[0].local_addr()?;
    let grace = config.shutdown_grace;
    let shared = Shared::new(config, None)?;
    let (listening, all_listening) = std::sync::mpsc::channel();
    for (core, socket) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let listening = listening.clone();
        std::thread::Builder::new()
            .name(format!("gateway-core-{core}"))
            .spawn(move || serve_on_own_runtime(socket, &shared, listening))?;
    }
    // Announce only once every listener accepts: a client told the address at once must
    // not be refused.
    drop(listening);
    for _ in 0..cores {
        all_listening
            .recv()
            .map_err(|_| std::io::Error::other("a listener thread ended before listening"))?;
    }
    eprintln!("runtime: per-core ({cores} current-thread runtimes, SO_REUSEPORT listeners)");
    // The metrics listener, if any, runs on this thread's runtime.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let metrics_addr = example_gateway::start_metrics(&shared).await?;
            announce(addr, metrics_addr);
            let signal = stop_signal().await?;
            let open = shared.limit.counter().get();
            shut_down(signal, grace, open, shared.shutdown(grace)).await;
            // The serving threads stop accepting; returning from `main` ends them.
            Ok(())
        })
}

/// Wait for `SIGTERM` (every orchestrator's "please stop"), `SIGINT` (Ctrl-C) or `SIGHUP`
/// (the terminal or the session went away; its default action would end the process at once
/// and cut the open streams with no error event); its name. All three shut down gracefully.
async fn stop_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::select! {
            _ = terminate.recv() => Ok("SIGTERM"),
            _ = interrupt.recv() => Ok("SIGINT"),
            _ = hangup.recv() => Ok("SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}

/// The graceful shutdown, said on stderr: `shutdown` stops accepting, waits for the open
/// streams for up to `grace`, then ends the rest (each gets an error event and a report).
async fn shut_down(
    signal: &str,
    grace: std::time::Duration,
    open: usize,
    shutdown: impl std::future::Future<Output = usize>,
) {
    eprintln!(
        "gateway: {signal}: no new connections; waiting up to {}s for {open} open stream(s)",
        grace.as_secs_f64()
    );
    let cut = shutdown.await;
    eprintln!("gateway: shut down ({cut} stream(s) ended by the shutdown)");
}

/// Tell the caller where the gateway listens, on stdout: the metrics listener first, then
/// `listening on http://ADDR`, the line scripts and tests wait for (a contract: keep it).
fn announce(addr: SocketAddr, metrics_addr: Option<SocketAddr>) {
    if let Some(metrics) = metrics_addr {
        println!("metrics on http://{metrics}");
    }
    println!("listening on http://{addr}");
}

/// `count` sockets bound to `listen` with `SO_REUSEPORT`; with port 0, all on the port the
/// first one got.
///
/// `SO_REUSEPORT` would also let a second gateway (of the same user) bind the same port and
/// silently take half of the connections: unless the port is meant to be shared
/// (`--share-port`), a plain socket, without it, is bound first, which fails while any
/// other process listens there; it is closed before the group binds (a second gateway
/// starting in that instant is not seen).
fn bind_reuseport_group(
    listen: SocketAddr,
    count: usize,
    share_port: bool,
) -> std::io::Result<Vec<TcpSocket>> {
    let listen = if share_port {
        listen
    } else {
        probe_unshared(listen)?
    };
    let first = bind(listen, true)?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind(addr, true)?);
    }
    Ok(sockets)
}

/// Bind `listen` without `SO_REUSEPORT` and close it again: fails while another process
/// listens there; the address bound (port 0 made concrete).
fn probe_unshared(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let probe = bind(listen, false).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {listen}: another process listens there already \
                     (--runtime per-core shares a port only among its own listeners)"
                ),
            )
        } else {
            e
        }
    })?;
    probe.local_addr()
}

/// A bound, not yet listening socket (listening registers it with the runtime that serves it).
fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket
        .bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    Ok(socket)
}

/// Serve the gateway on `socket` from a current-thread runtime on this thread, forever;
/// says so on `listening` once the socket listens.
fn serve_on_own_runtime(
    socket: TcpSocket,
    shared: &Shared,
    listening: std::sync::mpsc::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gateway: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        let listener: TcpListener = match socket.listen(BACKLOG) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("gateway: cannot listen: {e}");
                std::process::exit(1);
            }
        };
        let _ = listening.send(());
        shared.serve(listener).await;
    });
}

/// Start the mock upstream on its own thread and runtime; returns its address.
pub(crate) fn spawn_mock() -> std::io::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("mock-upstream".into())
        .spawn(move || {
            runtime.block_on(async {
                let (addr, _server) =
                    tower_sse_mock::spawn(tower_sse_mock::MockConfig::new()).await;
                let _ = tx.send(addr);
                std::future::pending::<()>().await;
            });
        })?;
    let addr = rx
        .recv()
        .map_err(|_| std::io::Error::other("the mock upstream did not start"))?;
    eprintln!("mock upstream on http://{addr}");
    Ok(addr)
}
