;; Writes into a directory that does not exist under allowed/: not created, refused.
;; expect: apply_failed No such file or directory
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/missing-dir/x\",\"content\":\"x\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 66))) (i32.const 0)))
