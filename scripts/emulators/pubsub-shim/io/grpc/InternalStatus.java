// A shim for a packaging bug of the Pub/Sub emulator 0.8.20: its fat jar bundles a grpc-netty that
// calls InternalStatus.asRuntimeException(Status, Metadata, boolean), but an older grpc-api without
// that method. Every client stream cancellation (RST_STREAM: a consumer that stops, is killed or
// reconnects) then throws NoSuchMethodError inside the emulator, the server-side stream is never
// torn down, and the emulator keeps handing messages to the dead stream, where they stay for good.
// scripts/emulators/pubsub.sh compiles this class and puts it ahead of the jar on the classpath.
// It is this jar's own class plus the missing method, which the newer grpc-api implements the same way.
package io.grpc;

public final class InternalStatus {
    public static final Metadata.Key<String> MESSAGE_KEY = Status.MESSAGE_KEY;
    public static final Metadata.Key<Status> CODE_KEY = Status.CODE_KEY;

    private InternalStatus() {}

    public static StatusRuntimeException asRuntimeExceptionWithoutStacktrace(Status status, Metadata trailers) {
        return new InternalStatusRuntimeException(status, trailers);
    }

    public static StatusRuntimeException asRuntimeException(Status status, Metadata trailers, boolean withStackTrace) {
        return withStackTrace ? new StatusRuntimeException(status, trailers)
                              : new InternalStatusRuntimeException(status, trailers);
    }
}
