"""Software prefetch for the Numba kernels: ``prefetch_read(a, i)`` / ``prefetch_write(a, i)``
hint that element ``i`` of the 1-D array ``a`` will be read / written soon (LLVM's
``llvm.prefetch``: prefetcht0 / prefetchw on x86). A hint only: it changes no result
and never faults, whatever ``i``. The Cython twin is GCC's ``__builtin_prefetch``.

The products gather and scatter at random states; at 10⁶ states those vectors leave the
caches and each access waits for memory. Prefetching the state of the entry ``AHEAD``
positions further lets ~``AHEAD`` such waits overlap (kernels/numba/linear.py).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

AHEAD = 32  # entries of P ahead (kernels/cython/linear.pyx: the same)
# the products prefetch from this many states on; below, a vector of float64 states fits
# in L2 and prefetching only costs instructions (kernels/cython/linear.pyx: the same)
PREFETCH_STATES = 1 << 17
# a fused pass (both sides) from this many: its lines (x beside the sums, 16 bytes a state)
# fill a core's L2 (512 KiB here) from 2¹⁵ states on; at 50,000 states prefetching took
# a third off the pass (benchmarks/RESULTS.md, issue 12)
FUSED_PREFETCH_STATES = 1 << 15
# the row sweeps' cold passes (the rows' writing pass and row_sweep's ``prefetch``)
# prefetch the streamed entries this many on: the hardware's own prefetch falls behind
# on an array the caches lost (kernels/cython/linear.pyx: the same)
STREAM_AHEAD = 256


def _prefetch(write):
    @intrinsic
    def prefetch(typingctx, arr, index):
        def codegen(context, builder, signature, args):
            ary_t, index_t = signature.args
            ary = context.make_array(ary_t)(context, builder, args[0])
            i = context.cast(builder, args[1], index_t, types.intp)
            ptr = cgutils.get_item_pointer(context, builder, ary_t, ary, [i], wraparound=False)
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            # (address, 0 read / 1 write, locality 3: keep in all cache levels, 1: data)
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(int(write)), i32(3), i32(1)])
            return context.get_dummy_value()
        return types.void(arr, index), codegen
    return prefetch


prefetch_read = _prefetch(False)
prefetch_write = _prefetch(True)
