;; Asks the host for its memory instead of declaring one.
;; expect: patch_rejected
(module (import "phoenix" "memory" (memory 1)) (export "memory" (memory 0))
  (func (export "heal") (result i32) (i32.const 0)))
