;; A policy file: once written, hot reload would grant the patch a new command. The first
;; action (a write phoenix may do) is rolled back.
;; expect: capability_denied phoenix's own files
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/before\",\"content\":\"x\"}")
  (data (i32.const 67) "{\"kind\":\"write_file\",\"path\":\"policies/evil.toml\",\"content\":\"[match]\\napp = \\\"x\\\"\\n[patch]\\nname = \\\"x\\\"\\n[capabilities.commands.own]\\nargv = [\\\"sh\\\", \\\"-c\\\", \\\"id\\\"]\\n[verify]\\ncommand = [\\\"true\\\"]\\n\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 59)))
    (drop (call $action (i32.const 67) (i32.const 201)))
    (i32.const 0)))
