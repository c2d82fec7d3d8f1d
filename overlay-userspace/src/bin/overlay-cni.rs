//! `overlay-cni`: the CNI plugin. A container runtime runs it with the CNI
//! environment and the network configuration on stdin; see the `cni` module.

use std::{
    io::{IsTerminal as _, Read as _},
    process::ExitCode,
};

use overlay_userspace::cni::{
    self, Env, Outcome,
    error::{CniError, IO_FAILURE},
    version::supported_list,
};

const HELP: &str = "\
overlay-cni: the CNI plugin of the eBPF VXLAN overlay.

A container runtime (Podman, containerd, CRI-O, kubelet) runs it; it sends each
request to the node's overlay agent, which plumbs the container and allocates its
address. Put it in the runtime's CNI plugin directory (e.g. /opt/cni/bin or
/usr/lib/cni) and a configuration in its network directory (/etc/cni/net.d):

  {\"cniVersion\":\"1.0.0\",\"name\":\"uber-net\",
   \"plugins\":[{\"type\":\"overlay-cni\",\"network\":\"uber-net\",
                \"socket\":\"/run/overlay/node1.sock\"}]}

Keys: network (the overlay network; default: name), socket (the agent's; default:
the only one in /run/overlay). Commands (CNI_COMMAND): ADD, DEL, CHECK, STATUS,
GC, VERSION.";

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{HELP}\n\nCNI versions: {}", supported_list().join(", "));
        return ExitCode::SUCCESS;
    }
    let env = Env::from_process();
    if env.command.is_none() && std::io::stdin().is_terminal() {
        eprintln!("overlay-cni is run by a container runtime, with CNI_COMMAND set; see --help");
    }
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => runtime().block_on(cni::run(&env, &stdin)),
        Err(e) => Outcome {
            stdout: CniError::new(IO_FAILURE, "reading stdin failed", e.to_string())
                .to_json("1.1.0"),
            success: false,
        },
    };
    println!("{}", outcome.stdout);
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
}
