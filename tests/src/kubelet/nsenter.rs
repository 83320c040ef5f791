//! Starting a process inside a pod: in the namespaces its sandbox holds (the
//! container's mount namespace is its root filesystem), with the container's
//! credentials applied as runc applies them. This is the one place the lab
//! needs `unsafe`, because joining namespaces and dropping privileges must
//! happen between fork and exec.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::security::Credentials;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of capset(2).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

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

    /// Arranges for `command` to run in these namespaces with `credentials`,
    /// in `working_dir` (of the container's root; `/` when `None`), as runc
    /// starts a container's process: the bounding set cut to the container's
    /// capabilities, groups, gid and uid set (capabilities kept across the
    /// change of uid), permitted and effective set to the container's,
    /// inheritable and ambient empty, then `no_new_privs` if asked. A
    /// non-root program therefore holds capabilities after exec only through
    /// file capabilities. The files stay open in `self` until the command has
    /// been spawned; they are close-on-exec.
    pub fn enter(&self, command: &mut Command, credentials: &Credentials, working_dir: Option<String>) {
        let fds: [(RawFd, libc::c_int); 3] = [
            (self.net.as_raw_fd(), libc::CLONE_NEWNET),
            (self.uts.as_raw_fd(), libc::CLONE_NEWUTS),
            (self.mnt.as_raw_fd(), libc::CLONE_NEWNS),
        ];
        let dir = std::ffi::CString::new(working_dir.unwrap_or_else(|| "/".to_string())).unwrap_or_default();
        let Credentials {
            uid,
            gid,
            capabilities,
            no_new_privs,
        } = *credentials;
        let data = [
            CapData {
                effective: capabilities as u32,
                permitted: capabilities as u32,
                inheritable: 0,
            },
            CapData {
                effective: (capabilities >> 32) as u32,
                permitted: (capabilities >> 32) as u32,
                inheritable: 0,
            },
        ];
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls (setns, chdir, prctl,
        // setgroups, setgid, setuid, capset) on values prepared before the
        // fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let check = |result: libc::c_int| {
                    if result == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                };
                for (fd, kind) in fds {
                    check(libc::setns(fd, kind))?;
                }
                check(libc::chdir(dir.as_ptr()))?;
                for cap in 0..64u64 {
                    // EINVAL: a number past the kernel's last capability.
                    if capabilities & (1 << cap) == 0
                        && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                        && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0))?;
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                let mut header = CapHeader {
                    version: CAPABILITY_VERSION_3,
                    pid: 0,
                };
                check(libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) as libc::c_int)?;
                check(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                ))?;
                if no_new_privs {
                    check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0))?;
                }
                Ok(())
            });
        }
    }
}
