;; Writes allowed/hardlink, a hard link (the test plants it) to a file outside the writable
;; directory, then writes through a symlink, which fails and rolls the first write back. The
;; write replaces the name with a new file (never writes into the shared inode), and so does its
;; undo: the file outside is never touched.
;; expect: apply_failed symlink
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/hardlink\",\"content\":\"x\"}")
  (data (i32.const 64) "{\"kind\":\"write_file\",\"path\":\"allowed/passwd-link\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 61)))
    (drop (call $action (i32.const 64) (i32.const 64)))
    (i32.const 0)))
