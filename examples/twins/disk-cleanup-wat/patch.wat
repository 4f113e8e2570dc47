;; disk-cleanup: reads the fault's kind; for "disk_full" plans the policy's `cleanup` command.
;; The WAT twin of patches/disk-cleanup (Rust) and disk-cleanup-assemblyscript, for P4
;; (scripts/bench): the same logic in each language. ABI: docs/patch-abi.md. Memory map:
;; constants below 256, the read buffer at 1024.
(module
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 4096 (pagesize 1)) ;; 4 KiB: reset by a copy alone

  (data (i32.const 0) "kind")                                        ;; key, 4 bytes
  (data (i32.const 16) "disk_full")                                  ;; expected kind, 9 bytes
  (data (i32.const 32) "{\"kind\":\"exec\",\"command\":\"cleanup\"}") ;; the action, 35 bytes
  (data (i32.const 96) "disk_full: planning the declared cleanup command") ;; 48 bytes

  ;; 1 when the `len` bytes at `a` and `b` are equal.
  (func $equal (param $a i32) (param $b i32) (param $len i32) (result i32)
    (local $i i32)
    (block $differ
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                               (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func (export "heal") (result i32)
    (local $len i32)
    (local.set $len (call $fault_get (i32.const 0) (i32.const 4) (i32.const 1024) (i32.const 64)))
    (if (i32.ne (local.get $len) (i32.const 9)) (then (return (i32.const 1))))
    (if (i32.eqz (call $equal (i32.const 1024) (i32.const 16) (i32.const 9))) (then (return (i32.const 1))))
    (call $log (i32.const 96) (i32.const 48))
    (drop (call $action (i32.const 32) (i32.const 35)))
    (i32.const 0)))
