;; Exports no heal function.
;; expect: patch_rejected heal
(module (memory (export "memory") 1))
