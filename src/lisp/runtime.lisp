;;;; windlass Lisp runtime: the code windlass puts in front of a Common Lisp app.
;;;;
;;;; Loaded (as source, form by form) by the launcher in run-from-source mode
;;;; (`--load .windlass/lisp/runtime-HASH.lisp`, then START or COMPILE-SYSTEM),
;;;; and by the build script before the image is saved; the same RUN function
;;;; is the toplevel of built executables. It only refers to packages that
;;;; exist once ASDF is required (CL, SB-*, ASDF, UIOP); Hunchentoot, swank,
;;;; Quicklisp and Qlot symbols are looked up at run time with FIND-SYMBOL.
;;;;
;;;; The fasl cache ($XDG_CACHE_HOME) is shared by every process of an app:
;;;; windlass compiles the system once (COMPILE-SYSTEM) and then starts the
;;;; instances, which only load fasls. Two rules keep that safe whoever
;;;; compiles: every COMPILE-FILE in a process running this runtime writes a
;;;; temporary file beside its output and renames it into place (a reader
;;;; sees the old fasl or the new one, never half of one), and holds an
;;;; exclusive flock on $XDG_CACHE_HOME/windlass.lock meanwhile (the compile
;;;; step and `windlass build` hold it for their whole load), so two
;;;; processes never write the cache at the same time.
;;;;
;;;; Convention: the entry function is called with no arguments. It reads its
;;;; port from the environment variable windlass sets (`port_env`), starts the
;;;; server and either returns (the Cookbook style: Hunchentoot runs in
;;;; background threads) or blocks. RUN then keeps the process in the
;;;; foreground. On SIGTERM or SIGINT every Hunchentoot acceptor started
;;;; through HUNCHENTOOT:START is stopped (the listening socket closes at
;;;; once), in-flight requests may finish for up to $WINDLASS_STOP_TIMEOUT
;;;; seconds (default 10), then the process exits 0. SIGHUP is ignored.
;;;;
;;;; Environment read at run time:
;;;;   WINDLASS_STOP_TIMEOUT  seconds to wait for in-flight requests (default 10)
;;;;   WINDLASS_SWANK_PORT    start swank on 127.0.0.1:PORT+INSTANCE (0 = any free port)
;;;;   INSTANCE               the instance index windlass sets (0 when unset)
;;;;   WINDLASS_CONSOLE       1: run a REPL on stdin/stdout (the console `windlass
;;;;                          attach` shows); SIGINT (Ctrl-C there) then aborts the
;;;;                          form being evaluated instead of stopping the app
;;;; Lines written to stderr start with "windlass-lisp: "; the swank port is
;;;; announced as "windlass-lisp: swank-port=N".

(require :asdf)

(defpackage :windlass-launcher
  (:use :cl)
  (:export #:run #:start #:compile-system #:prepare #:load-project #:load-swank
           #:check-savable #:say #:with-cache-lock))

(in-package :windlass-launcher)

(defvar *acceptors* '()
  "Hunchentoot acceptors started and not yet stopped.")

(defvar *lock* (sb-thread:make-mutex :name "windlass acceptors"))

(defvar *wake* (sb-thread:make-semaphore :name "windlass wake")
  "Signalled when an acceptor stops, to let the foreground loop look again.")

(defvar *stopping* nil
  "T once a stop signal arrived.")

(defun say (control &rest args)
  "One line on stderr, prefixed so that windlass can tell it from app output."
  (ignore-errors
   (format *error-output* "~&windlass-lisp: ~?~%" control args)
   (finish-output *error-output*)))

(defun one-line (condition)
  "CONDITION's report on one line (ASDF's reports span several)."
  (let ((text (or (ignore-errors (princ-to-string condition))
                  (format nil "~s" (type-of condition)))))
    (format nil "~{~a~^ ~}"
            (remove "" (mapcar (lambda (line) (string-trim '(#\Space #\Tab #\Return) line))
                               (uiop:split-string text :separator '(#\Newline)))
                    :test #'string=))))

(defun env-seconds (name default)
  "A non-negative number of seconds from the environment, else DEFAULT."
  (let* ((text (sb-ext:posix-getenv name))
         (value (and text
                     (ignore-errors
                      (let ((*read-eval* nil))
                        (read-from-string text))))))
    (if (and (realp value) (>= value 0)) value default)))

(defun env-port (name)
  "An integer port 0..65535 from the environment, else NIL."
  (let* ((text (sb-ext:posix-getenv name))
         (value (and text (ignore-errors (parse-integer text)))))
    (and value (<= 0 value 65535) value)))

(defun swank-port ()
  "$WINDLASS_SWANK_PORT plus the instance index $INSTANCE (instance i of an app
listens on swank_port + i); 0 stays 0 (any free port); NIL without swank."
  (let ((base (env-port "WINDLASS_SWANK_PORT"))
        (index (env-port "INSTANCE")))
    (cond ((null base) nil)
          ((or (zerop base) (null index)) base)
          ((<= (+ base index) 65535) (+ base index))
          (t (say "swank port ~d + instance ~d is past 65535; swank gets any free port"
                  base index)
             0))))

(defun flush-all ()
  (ignore-errors (finish-output *standard-output*))
  (ignore-errors (finish-output *error-output*)))

(defun die (code)
  "Exit now, without unwinding other threads (they may hold locks)."
  (flush-all)
  (sb-ext:exit :code code :abort t))

;;; Hunchentoot acceptor registry, filled by methods defined at run time.

(defun hsym (name)
  (let ((package (find-package "HUNCHENTOOT")))
    (and package (find-symbol name package))))

(defun register-acceptor (acceptor)
  (sb-thread:with-mutex (*lock*)
    (pushnew acceptor *acceptors*)))

(defun unregister-acceptor (acceptor)
  (sb-thread:with-mutex (*lock*)
    (setf *acceptors* (remove acceptor *acceptors*)))
  (sb-thread:signal-semaphore *wake*))

(defun install-hunchentoot-hooks ()
  "Track acceptors through :AFTER methods on HUNCHENTOOT:START and STOP.
Returns NIL when Hunchentoot is not loaded."
  (when (find-package "HUNCHENTOOT")
    (let ((*package* (find-package :windlass-launcher)))
      (eval (read-from-string
             "(defmethod hunchentoot:start :after ((acceptor hunchentoot:acceptor))
                (register-acceptor acceptor))"))
      (eval (read-from-string
             "(defmethod hunchentoot:stop :after ((acceptor hunchentoot:acceptor)
                                                 &key &allow-other-keys)
                (unregister-acceptor acceptor))")))
    t))

(defun requests-in-progress (acceptor)
  (let ((reader (or (hsym "ACCESSOR-REQUESTS-IN-PROGRESS")   ; 1.2.x spelling
                    (hsym "ACCEPTOR-REQUESTS-IN-PROGRESS"))))
    (or (and reader (fboundp reader)
             (ignore-errors (funcall reader acceptor)))
        0)))

(defun graceful-stop (reason)
  "Stop accepting, let in-flight requests finish (bounded), exit 0."
  (let* ((timeout (env-seconds "WINDLASS_STOP_TIMEOUT" 10))
         (deadline (+ (get-internal-real-time)
                      (round (* timeout internal-time-units-per-second))))
         (acceptors (sb-thread:with-mutex (*lock*) (copy-list *acceptors*)))
         (stop (hsym "STOP"))
         ;; A hard HUNCHENTOOT:STOP closes the listening socket and joins the
         ;; listener thread; request threads carry on with their request and
         ;; close their connection afterwards. One thread per acceptor so a
         ;; stuck stop cannot outlive the deadline.
         (stoppers (mapcar (lambda (acceptor)
                             (sb-thread:make-thread
                              (lambda ()
                                (handler-case (funcall stop acceptor)
                                  (error (e) (say "stopping ~a: ~a" acceptor e))))
                              :name "windlass acceptor stop"))
                           acceptors)))
    (say "~a: stopping ~d acceptor(s); in-flight requests get up to ~as"
         reason (length acceptors) timeout)
    (loop
      (let ((busy (reduce #'+ acceptors :key #'requests-in-progress))
            (stopping (count-if #'sb-thread:thread-alive-p stoppers)))
        (when (and (zerop busy) (zerop stopping))
          (say "stopped cleanly")
          (return))
        (when (>= (get-internal-real-time) deadline)
          (say "stop timeout after ~as: ~d request(s) still in progress, exiting anyway"
               timeout busy)
          (return))
        (sleep 0.02)))
    (die 0)))

(defvar *console-thread* nil
  "The console REPL's thread, when WINDLASS_CONSOLE=1.")

(defun interrupt-console ()
  "SIGINT with a console: abort the form being evaluated (like a REPL), not the app.
Returns NIL when there is no console REPL running."
  (let ((thread *console-thread*))
    (when (and thread (sb-thread:thread-alive-p thread))
      (sb-thread:interrupt-thread thread
                                  (lambda () (throw 'console-abort :interrupted)))
      t)))

(defun console-repl ()
  "A REPL on the console (stdin/stdout, a PTY windlass attaches viewers to). Errors are
printed and the loop goes on: the debugger stays disabled. End of input ends the REPL,
not the app."
  (let ((*package* (find-package :cl-user))
        (eof (gensym "EOF")))
    (loop
      (ignore-errors
       (format t "~&~a> " (or (first (package-nicknames *package*))
                              (package-name *package*)))
       (finish-output))
      (let ((outcome
              (catch 'console-abort
                (handler-case
                    (let ((form (read *standard-input* nil eof)))
                      (when (eq form eof)
                        (return))
                      (let ((values (multiple-value-list (eval form))))
                        (setf +++ ++ ++ + + form
                              *** ** ** * * (first values))
                        (dolist (value values)
                          (format t "~&~s" value))
                        (terpri)
                        (finish-output)
                        :ok))
                  (error (e)
                    (ignore-errors
                     (format t "~&; ~a: ~a~%" (type-of e) e)
                     (finish-output))
                    :error)))))
        (when (eq outcome :interrupted)
          (ignore-errors (clear-input *standard-input*))
          (format t "~&; interrupted (the app keeps running; stop it with windlass stop)~%"))))))

(defun start-console ()
  (setf *console-thread*
        (sb-thread:make-thread #'console-repl :name "windlass console")))

(defun on-stop-signal (name)
  (if (sb-ext:compare-and-swap (symbol-value '*stopping*) nil t)
      (say "~a: a stop is already in progress" name)
      (sb-thread:make-thread (lambda () (graceful-stop name))
                             :name "windlass graceful stop")))

(defun install-signal-handlers ()
  (sb-sys:enable-interrupt sb-unix:sigterm
                           (lambda (signal info context)
                             (declare (ignore signal info context))
                             (on-stop-signal "SIGTERM")))
  (sb-sys:enable-interrupt sb-unix:sigint
                           (lambda (signal info context)
                             (declare (ignore signal info context))
                             (unless (interrupt-console)
                               (on-stop-signal "SIGINT"))))
  (sb-sys:enable-interrupt sb-unix:sighup
                           (lambda (signal info context)
                             (declare (ignore signal info context))
                             (say "SIGHUP ignored (stop with SIGTERM or SIGINT)"))))

;;; The fasl cache: one writer at a time, atomic fasls.

(defconstant +lock-sh+ 1)
(defconstant +lock-ex+ 2)
(defconstant +lock-nb+ 4)
(defconstant +o-cloexec+ #o2000000)

(defvar *cache-lock-fd* nil
  "The fd of the cache lock file while this thread holds the lock.")

(defun cache-lock-path ()
  (uiop:xdg-cache-home "windlass.lock"))

(defun flock (fd operation)
  "flock(2), retried on EINTR. True when the lock was taken."
  (loop
    (let ((result (sb-alien:alien-funcall
                   (sb-alien:extern-alien "flock" (function sb-alien:int sb-alien:int sb-alien:int))
                   fd operation)))
      (cond ((zerop result) (return t))
            ((/= (sb-alien:get-errno) sb-unix:eintr) (return nil))))))

(defun call-with-cache-lock (thunk)
  "Call THUNK holding the exclusive lock on the fasl cache (re-entrant). When the
lock file cannot be opened, say so and call THUNK anyway: fasls stay atomic."
  (if *cache-lock-fd*
      (funcall thunk)
      (let* ((path (cache-lock-path))
             (fd (progn
                   (ignore-errors (ensure-directories-exist path))
                   (sb-unix:unix-open (uiop:native-namestring path)
                                      (logior sb-unix:o_rdwr sb-unix:o_creat +o-cloexec+)
                                      #o644))))
        (cond ((null fd)
               (say "cannot open the cache lock ~a; compiling without it"
                    (uiop:native-namestring path))
               (funcall thunk))
              (t
               (unwind-protect
                    (progn
                      (unless (flock fd (logior +lock-ex+ +lock-nb+))
                        (say "waiting for the fasl cache lock ~a (another compile or build is writing the cache)"
                             (uiop:native-namestring path))
                        (flock fd +lock-ex+))
                      (let ((*cache-lock-fd* fd))
                        (funcall thunk)))
                 (sb-unix:unix-close fd)))))))

(defmacro with-cache-lock (() &body body)
  `(call-with-cache-lock (lambda () ,@body)))

(defvar *temp-counter* 0)

(defun atomic-compile-file (original input-file &rest arguments &key output-file &allow-other-keys)
  "COMPILE-FILE, encapsulated: compile to a temporary file in the output's
directory, then rename it over the output, holding the cache lock."
  (declare (ignore output-file))
  (let* ((final (merge-pathnames (apply #'compile-file-pathname input-file arguments)))
         (temp (make-pathname :name (format nil "~a-windlass-tmp-~d-~d"
                                            (pathname-name final)
                                            (sb-unix:unix-getpid)
                                            (incf *temp-counter*))
                              :defaults final))
         (rest (loop for (key value) on arguments by #'cddr
                     unless (eq key :output-file) append (list key value))))
    (ensure-directories-exist final)
    (with-cache-lock ()
      (let ((done nil))
        (unwind-protect
             (multiple-value-bind (truename warnings-p failure-p)
                 (apply original input-file :output-file temp rest)
               (cond (truename
                      (multiple-value-bind (ok errno)
                          (sb-unix:unix-rename (uiop:native-namestring truename)
                                               (uiop:native-namestring final))
                        (unless ok
                          (error "cannot rename ~a to ~a: ~a" truename final
                                 (sb-int:strerror errno))))
                      (setf done t)
                      (values (truename final) warnings-p failure-p))
                     (t (values nil warnings-p failure-p))))
          (unless done
            (ignore-errors (delete-file temp))))))))

(defun install-atomic-fasls ()
  "Make every COMPILE-FILE of this process atomic and locked (idempotent)."
  (unless (sb-int:encapsulated-p 'compile-file 'windlass-atomic-fasl)
    (sb-int:encapsulate 'compile-file 'windlass-atomic-fasl #'atomic-compile-file)))

;;; Loading (source mode and build).

(defun forget-stale-fasls (system)
  "Delete the fasl of every source file of SYSTEM (its own files, not its
dependencies') written in the same second as that fasl, or later. ASDF compares
whole seconds, so an edit made in the second of the last compile would look
compiled and its old fasl would be loaded. Costs one stat per file pair."
  (let ((system (asdf:find-system system nil)))
    (when system
      (dolist (component (asdf:required-components
                          system :other-systems nil
                                 :component-type 'asdf:cl-source-file))
        (let ((source (asdf:component-pathname component))
              (fasl (first (asdf:output-files 'asdf:compile-op component))))
          (when (and fasl (probe-file fasl) (probe-file source)
                     (>= (file-write-date source) (file-write-date fasl)))
            (delete-file fasl)))))))

(defun load-project (system &key directories (loader :asdf) setup-file forget-stale)
  "Make DIRECTORIES visible to ASDF and load SYSTEM with LOADER
(:asdf, :quicklisp or :qlot; the last two load SETUP-FILE first); with
FORGET-STALE, first drop fasls as old as their source (see FORGET-STALE-FASLS).
On failure print the condition and exit 1."
  (say "loading system ~a (~(~a~))" system loader)
  (handler-case
      (progn
        (when (member loader '(:quicklisp :qlot))
          (load setup-file))
        (asdf:initialize-source-registry
         `(:source-registry
           ,@(mapcar (lambda (dir) (list :directory dir)) directories)
           :inherit-configuration))
        (when forget-stale
          (forget-stale-fasls system))
        (if (member loader '(:quicklisp :qlot))
            (funcall (find-symbol "QUICKLOAD" "QL") system :silent t)
            (asdf:load-system system))
        (say "loaded system ~a" system))
    (error (e)
      (say "failed to load system ~a: ~a" system (one-line e))
      (die 1))))

(defun load-swank ()
  "Load swank (compiled into the XDG cache, not ~/.slime). Exit 1 on failure."
  (unless (find-package "SWANK")
    (handler-case
        (let ((loader (merge-pathnames "swank-loader.lisp"
                                       (asdf:system-source-directory "swank"))))
          (load loader)
          (setf (symbol-value (find-symbol "*FASL-DIRECTORY*" "SWANK-LOADER"))
                (uiop:xdg-cache-home "windlass" "swank" "fasl/"))
          (funcall (find-symbol "INIT" "SWANK-LOADER") :setup t))
      (error (e)
        (say "failed to load swank: ~a" (one-line e))
        (die 1)))))

(defun address-in-use-p (condition)
  (let ((class (find-symbol "ADDRESS-IN-USE-ERROR" "SB-BSD-SOCKETS")))
    (and class (typep condition class))))

(defun start-swank (port)
  (let ((package (find-package "SWANK")))
    (cond ((null package)
           (say "WINDLASS_SWANK_PORT is set but swank is not in this image ~
                 (build with a swank port configured); continuing without it"))
          (t
           ;; Do not let swank replace the disabled debugger globally on
           ;; connect: errors outside swank threads must still exit the process.
           (setf (symbol-value (find-symbol "*GLOBAL-DEBUGGER*" package)) nil)
           (flet ((create ()
                    (let ((actual (funcall (find-symbol "CREATE-SERVER" package)
                                           :port port :dont-close t
                                           :interface "127.0.0.1")))
                      (say "swank-port=~d" actual))))
             (handler-case (create)
               (error (e)
                 (unless (address-in-use-p e)
                   (error e))
                 ;; During a blue-green reload the process this one replaces keeps
                 ;; the port until it stops: take it over then.
                 (say "swank port ~d is in use (by the process this one replaces?); retrying every second"
                      port)
                 (sb-thread:make-thread
                  (lambda ()
                    (loop
                      (sleep 1)
                      (handler-case (return (create))
                        (error (e)
                          (unless (address-in-use-p e)
                            (say "swank: ~a" e)
                            (return))))))
                  :name "windlass swank retry"))))))))

(defun check-savable ()
  "Exit 3 when a thread other than this one runs: SBCL cannot save the image."
  (let ((others (remove-if (lambda (thread)
                             (or (eq thread sb-thread:*current-thread*)
                                 (not (sb-thread:thread-alive-p thread))
                                 (let ((ephemeral (find-symbol "THREAD-EPHEMERAL-P" "SB-THREAD")))
                                   (and ephemeral (fboundp ephemeral)
                                        (funcall ephemeral thread)))))
                           (sb-thread:list-all-threads))))
    (when others
      (say "threads-at-save: ~{~s~^, ~}" (mapcar #'sb-thread:thread-name others))
      (die 3))))

;;; The toplevel.

(defun resolve-entry (entry)
  (let ((symbol (handler-case (let ((*read-eval* nil)
                                    (*package* (find-package :cl-user)))
                                (read-from-string entry))
                  (error (e)
                    (say "entry point ~s cannot be read: ~a" entry e)
                    (die 1)))))
    (unless (and (symbolp symbol) (fboundp symbol))
      (say "entry point ~s is not a function after loading the system" entry)
      (die 1))
    symbol))

(defun run (entry)
  "Disable the debugger, handle stop signals, start swank if asked, call
ENTRY (a \"package:function\" string) with no arguments, stay in the foreground."
  (sb-ext:disable-debugger)
  (ignore-errors (setf (sb-alien:extern-alien "lose_on_corruption_p" sb-alien:int) 1))
  (install-signal-handlers)
  (install-hunchentoot-hooks)
  (let ((swank-port (swank-port)))
    (when swank-port
      (start-swank swank-port)))
  (let ((function (resolve-entry entry)))
    (say "calling ~a" entry)
    (handler-bind ((error (lambda (e)
                            (say "entry point ~a signalled: ~a" entry e)
                            (ignore-errors
                             (sb-debug:print-backtrace :count 25 :stream *error-output*))
                            (die 1))))
      (funcall function)))
  (flush-all)
  (let ((started (sb-thread:with-mutex (*lock*) (copy-list *acceptors*))))
    (when (and (null started) (find-package "HUNCHENTOOT"))
      (say "the entry point returned and no Hunchentoot acceptor runs; staying up until stopped"))
    (when (equal (sb-ext:posix-getenv "WINDLASS_CONSOLE") "1")
      (start-console))
    (loop
      (sb-thread:wait-on-semaphore *wake*)
      (when (and started (not *stopping*)
                 (null (sb-thread:with-mutex (*lock*) *acceptors*)))
        (say "every acceptor was stopped by the app; exiting")
        (die 0)))))

;;; Entry points of the command lines windlass runs.

(defun prepare (system &key directories (loader :asdf) setup-file swank lock)
  "Load SYSTEM (and swank when SWANK), every COMPILE-FILE atomic; with LOCK,
hold the cache lock for the whole load (a compile step or a build), and
recompile a source as old as its fasl (nobody else loads fasls meanwhile)."
  (install-atomic-fasls)
  (flet ((load-all ()
           (load-project system :directories directories :loader loader
                                :setup-file setup-file :forget-stale lock)
           (when swank
             (load-swank))))
    (if lock
        (with-cache-lock () (load-all))
        (load-all))))

(defun compile-system (system &rest options &key directories loader setup-file swank)
  "The compile step: compile (and load) SYSTEM, and swank when SWANK, holding
the cache lock, then exit 0. A failure exits 1 with the condition on stderr."
  (declare (ignore directories loader setup-file swank))
  (sb-ext:disable-debugger)
  (apply #'prepare system :lock t options)
  (say "compiled system ~a" system)
  (flush-all)
  (sb-ext:exit :code 0))

(defun start (system entry &rest options &key directories loader setup-file swank)
  "An instance: load SYSTEM (from fasls the compile step wrote), then RUN ENTRY."
  (declare (ignore directories loader setup-file swank))
  (apply #'prepare system options)
  (run entry))
