//! Names for the kinds of file that are not regular files, for messages.

use std::os::unix::fs::FileTypeExt;

/// What a file of type `kind` is: "a directory", "a character device" ...
pub(crate) fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a named pipe"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}
