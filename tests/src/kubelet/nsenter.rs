//! Starting a process inside a pod: in the namespaces its sandbox holds, as
//! the container's user. This is the one place the lab needs `unsafe`, because
//! joining namespaces and dropping privileges must happen between fork and
//! exec.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A pod's namespaces, opened from its sandbox process.
pub struct PodNamespaces {
    net: File,
    uts: File,
    mnt: File,
}

impl PodNamespaces {
    /// The network and UTS namespaces of the pod's holder, and the mount
    /// namespace of a container's holder (its own filesystem view).
    pub fn of(pod_holder: u32, mount_holder: u32) -> io::Result<Self> {
        let open = |pid: u32, kind: &str| File::open(format!("/proc/{pid}/ns/{kind}"));
        Ok(PodNamespaces {
            net: open(pod_holder, "net")?,
            uts: open(pod_holder, "uts")?,
            mnt: open(mount_holder, "mnt")?,
        })
    }

    /// Arranges for `command` to run in these namespaces as `user`
    /// (uid, gid), or as root when `None`. The files stay open in `self`
    /// until the command has been spawned; they are close-on-exec.
    pub fn enter(&self, command: &mut Command, user: Option<(u32, u32)>, working_dir: Option<String>) {
        let fds: [(RawFd, libc::c_int); 3] = [
            (self.net.as_raw_fd(), libc::CLONE_NEWNET),
            (self.uts.as_raw_fd(), libc::CLONE_NEWUTS),
            (self.mnt.as_raw_fd(), libc::CLONE_NEWNS),
        ];
        let dir = std::ffi::CString::new(working_dir.unwrap_or_else(|| "/".to_string())).unwrap_or_default();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (setns, chdir, setgroups,
        // setgid, setuid) on values prepared before the fork; it allocates
        // nothing.
        unsafe {
            command.pre_exec(move || {
                for (fd, kind) in fds {
                    if libc::setns(fd, kind) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::chdir(dir.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some((uid, gid)) = user
                    && (libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}
