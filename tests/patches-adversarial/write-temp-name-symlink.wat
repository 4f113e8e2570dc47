;; Writes allowed/fresh, where a symlink to a file outside waits at the temporary name writes
;; once used (.fresh.phoenix-tmp; the test plants it: the escape of 2026-12-02), then writes
;; through a symlink: the first write must not go through the planted link, and it is rolled
;; back. (Writes now use a name recorded per write, cleared before use: see the unit tests of
;; effects.rs and files.rs.)
;; expect: apply_failed symlink
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/fresh\",\"content\":\"x\"}")
  (data (i32.const 64) "{\"kind\":\"write_file\",\"path\":\"allowed/passwd-link\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 58)))
    (drop (call $action (i32.const 64) (i32.const 64)))
    (i32.const 0)))
