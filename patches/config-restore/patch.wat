;; config-restore: plans one write_file with the known-good config (a 91-byte action).
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 4096 (pagesize 1)) ;; 4 KiB: reset by a copy alone
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\".demo/config/app.conf\",\"content\":\"port = 8080\\nworkers = 4\\n\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 91)))
    (i32.const 0)))
